"""Experiment configs (``configs/experiment/*.yaml``): data + model + trainer + evaluation.

An experiment file may ``include`` other config files (paths relative to the ``configs/``
folder that holds it, e.g. ``model/gru4rec.yaml``); they are deep-merged in order and the
experiment's own keys win. The merged mapping is then validated strictly: unknown keys fail
with the file and the dotted key named, and the model section is validated against the
registered model's own config class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from shoprec.config import (
    ConfigError,
    StrictModel,
    apply_overrides,
    read_yaml,
    validate_config,
)


class DataRef(StrictModel):
    """Which prepared dataset to train on, and how to make it if it is not there yet."""

    path: str  # a prepared dataset folder (``shoprec data prepare`` output)
    preset: str | None = None  # data preset used to prepare ``path`` when it is missing
    input: str | None = None  # source export for that preset (default: the preset's own)


class TrainerConfig(StrictModel):
    """Lightning trainer knobs that a run may set; one default each."""

    max_epochs: int = Field(default=10, ge=1)
    patience: int = Field(default=2, ge=0)  # early stopping on ``monitor``; 0 disables it
    monitor: str = "val/mrr@20"
    mode: Literal["max", "min"] = "max"
    accelerator: str = "cpu"
    devices: int | str = 1
    strategy: str = "auto"  # "ddp" for multi-process training (gloo on CPU)
    num_nodes: int = Field(default=1, ge=1)
    precision: str = "32-true"
    num_threads: int = Field(default=0, ge=0)  # torch intra-op threads; 0 = torch default
    limit_train_batches: float | int = 1.0
    limit_val_batches: float | int = 1.0
    val_check_interval: float | int = 1.0
    log_every_n_steps: int = Field(default=50, ge=1)
    progress_bar: bool = True
    deterministic: bool = True
    gradient_clip_val: float | None = None


class EvaluationConfig(StrictModel):
    """Final evaluation on the test cases (full catalogue, pessimistic ties)."""

    enabled: bool = True
    batch_size: int = Field(default=128, ge=1)  # 128-row chunks: bigger ones re-allocate
    exclude_seen: bool = False
    max_prefix_len: int | None = None


class ExperimentConfig(StrictModel):
    """One training run of a next-item model."""

    name: str
    task: Literal["next-item"] = "next-item"
    description: str = ""
    seed: int = 42
    data: DataRef
    model: dict[str, Any]  # ``name`` + that model's config keys (validated by the model)
    training: dict[str, Any] = Field(default_factory=dict)  # regime knobs (lr, batch size, ...)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    output_dir: str = "runs"
    resume: bool = True  # resume from the run folder's last checkpoint when it exists

    @property
    def model_name(self) -> str:
        return str(self.model.get("name", ""))


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Merge ``over`` into a copy of ``base``; nested mappings merge, other values replace.

    >>> deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}, "d": 4})
    {'a': {'b': 3, 'c': 2}, 'd': 4}
    """
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _configs_root(path: Path) -> Path:
    for parent in path.resolve().parents:
        if parent.name == "configs":
            return parent
    return path.resolve().parent


def resolve_includes(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read ``path`` and merge its ``include`` list (recursively) underneath its own keys."""
    resolved = path.resolve()
    if resolved in seen:
        raise ConfigError(f"{path}: include cycle through {', '.join(map(str, seen))}")
    data = read_yaml(path)
    includes = data.pop("include", []) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list):
        raise ConfigError(f"{path}: 'include' must be a list of config paths")
    merged: dict[str, Any] = {}
    root = _configs_root(path)
    for inc in includes:
        inc_path = root / str(inc)
        if not inc_path.is_file():
            raise ConfigError(f"{path}: include {inc!r} not found (looked in {inc_path})")
        merged = deep_merge(merged, resolve_includes(inc_path, (*seen, resolved)))
    return deep_merge(merged, data)


def validate_model_section(model: dict[str, Any], source: str) -> Any:
    """Validate the ``model`` section against the registered model's config class."""
    from shoprec.models.registry import config_class, model_names, regime

    name = model.get("name")
    if not name:
        raise ConfigError(f"{source}: model.name is required ({', '.join(model_names())})")
    if name not in model_names():
        raise ConfigError(
            f"{source}: model.name {name!r} is not registered ({', '.join(model_names())})"
        )
    if regime(str(name)) == "hybrid":
        raise ConfigError(
            f"{source}: model.name {name!r} is not trained from a config; build it from a "
            "trained neural bundle with `shoprec hybrid build` (and choose its weights with "
            "`shoprec hybrid tune` on a validation window)"
        )
    fields = {k: v for k, v in model.items() if k != "name"}
    cls = config_class(str(name))
    if "n_items" in cls.model_fields and "n_items" not in fields:
        fields["n_items"] = 1  # data-derived; filled in by fit()
    try:
        return validate_config(cls, fields, source=f"{source} (model)")
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("\n  ", "\n  model.")) from None


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load an experiment YAML with its includes and ``--set`` overrides, validated strictly."""
    p = Path(path)
    data = apply_overrides(resolve_includes(p), overrides)
    cfg = validate_config(ExperimentConfig, data, source=str(p))
    validate_model_section(cfg.model, str(p))
    return cfg
