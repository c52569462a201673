"""Closed, typed configuration: YAML files plus ``--set a.b=c`` overrides.

Every config is a pydantic model with ``extra="forbid"``: an unknown key or a wrong type fails
loudly, naming the file and the dotted key (RecTools' ``extra="forbid"``; nanoGPT's configurator).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from shoprec.errors import ShoprecError

__all__ = [
    "ConfigError",
    "StrictModel",
    "add_run_args",
    "apply_overrides",
    "load_config",
    "parse_override",
    "read_yaml",
]

M = TypeVar("M", bound=BaseModel)


class ConfigError(ShoprecError, ValueError):
    """A config file or override that cannot be used; the message names file and key."""


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are an error, values are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing file or a non-mapping document."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is read as YAML (``3`` -> int, ``[1,2]`` -> list).

    >>> parse_override("trainer.max_epochs=3")
    (['trainer', 'max_epochs'], 3)
    >>> parse_override("model.name=gru4rec")
    (['model', 'name'], 'gru4rec')
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from exc
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b=c`` override applied (nested dicts created).

    >>> apply_overrides({"a": {"b": 1}}, ["a.b=2", "a.c=x"])
    {'a': {'b': 2, 'c': 'x'}}
    """
    out = copy.deepcopy(data)
    for ov in overrides or []:
        parts, value = parse_override(ov)
        node = out
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = {}
                node[p] = nxt
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {ov!r}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def _format_validation_error(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: invalid config"]
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "<root>"
        value = err.get("input")
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        if err["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key (value {shown})")
        else:
            lines.append(f"  {loc}: {err['msg']} (value {shown})")
    return "\n".join(lines)


def validate_config(model: type[M], data: dict[str, Any], source: str = "<config>") -> M:
    """Validate a mapping into ``model``; errors name the source and every bad dotted key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc)) from None


def load_config(model: type[M], path: str | Path, overrides: list[str] | None = None) -> M:
    """Load ``path`` (YAML), apply ``--set`` overrides and validate it strictly into ``model``."""
    data = apply_overrides(read_yaml(path), overrides)
    return validate_config(model, data, source=str(path))


def add_run_args(parser: argparse.ArgumentParser, config_help: str, example: str) -> None:
    """The arguments every config-driven, tracked run takes (``train``, ``churn train``)."""
    parser.add_argument("config", help=config_help)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key, e.g. --set {example}",
    )
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite)"
    )
    parser.add_argument("--experiment", default=None, help="MLflow experiment name")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
