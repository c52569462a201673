"""Framework-free model bundles: config JSON + weights-only tensors + item index + metrics.

A bundle folder holds::

    bundle.json      format version, model name + config, metrics, evaluation protocol,
                     the dataset's identity (name, source hashes, split), provenance
    weights.pt       a flat ``dict[str, Tensor]`` saved with ``torch.save``; loaded with
                     ``torch.load(weights_only=True)`` so no class is ever unpickled
    items.parquet    item_idx -> original item id (+ train count, category when known)
    aux.pt           optional serving aids as tensors (e.g. item neighbours for reasons and
                     cart add-ons), same weights-only format

It loads without Lightning and without training code (ARCHITECTURE principle 12): evaluation
and the BentoML service both go through :func:`load_bundle`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import torch

from shoprec import __version__, schema
from shoprec.errors import ShoprecError
from shoprec.models.base import NextItemModel
from shoprec.models.registry import model_class

FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"
WEIGHTS = "weights.pt"
AUX = "aux.pt"
ITEMS = "items.parquet"


class BundleError(ShoprecError):
    """A bundle folder that is missing, incomplete or of an unknown format."""


@dataclass
class Bundle:
    """A loaded next-item bundle: the model, its item index and what is known about it."""

    model: NextItemModel
    items: pl.DataFrame
    meta: dict[str, Any]
    path: Path
    aux: dict[str, torch.Tensor]

    @property
    def item_ids(self) -> list[str]:
        """Original id per item_idx; position 0 (padding) is an empty string."""
        return ["", *self.items.sort(schema.ITEM_IDX).get_column(schema.ITEM_ID).to_list()]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def save_bundle(
    path: str | Path,
    model: NextItemModel,
    items: pl.DataFrame,
    *,
    metrics: dict[str, float] | None = None,
    protocol: dict[str, Any] | None = None,
    dataset: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    aux: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` as a bundle folder (replacing an existing one atomically)."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    config, tensors = model.to_bundle()
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    torch.save(flat, tmp / WEIGHTS)
    items.sort(schema.ITEM_IDX).write_parquet(tmp / ITEMS)
    if aux:
        torch.save({k: v.detach().cpu().contiguous() for k, v in aux.items()}, tmp / AUX)
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": "next-item",
        "model_name": model.name,
        "model_config": config,
        "n_items": model.n_items,
        "metrics": metrics or {},
        "protocol": protocol or {},
        "dataset": dataset or {},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "shoprec_version": __version__,
        **(extra or {}),
    }
    (tmp / BUNDLE_JSON).write_text(json.dumps(_jsonable(meta), indent=2), encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def read_bundle_meta(path: str | Path) -> dict[str, Any]:
    p = Path(path) / BUNDLE_JSON
    if not p.is_file():
        raise BundleError(f"{Path(path)}: not a shoprec bundle ({BUNDLE_JSON} missing)")
    meta: dict[str, Any] = json.loads(p.read_text(encoding="utf-8"))
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{p}: bundle format {version!r} is not supported ({FORMAT_VERSION})")
    return meta


def load_bundle(path: str | Path) -> Bundle:
    """Load a bundle written by :func:`save_bundle`; never unpickles a class."""
    root = Path(path)
    meta = read_bundle_meta(root)
    for name in (WEIGHTS, ITEMS):
        if not (root / name).is_file():
            raise BundleError(f"{root}: incomplete bundle ({name} missing)")
    tensors = torch.load(root / WEIGHTS, map_location="cpu", weights_only=True)
    if not isinstance(tensors, dict):
        raise BundleError(f"{root / WEIGHTS}: expected a dict of tensors")
    cls = model_class(str(meta["model_name"]))
    model: NextItemModel = cls.from_bundle(meta["model_config"], tensors)
    if hasattr(model, "eval"):
        model.eval()
    items = pl.read_parquet(root / ITEMS)
    aux: dict[str, torch.Tensor] = {}
    if (root / AUX).is_file():
        aux = torch.load(root / AUX, map_location="cpu", weights_only=True)
    return Bundle(model=model, items=items, meta=meta, path=root, aux=aux)
