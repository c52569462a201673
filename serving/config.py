"""Serving limits and knobs: ``serving/config.yaml``, overridable from the environment.

Read twice on purpose: once at import, for what BentoML fixes when the class is decorated
(workers, timeout, concurrency, body size), and again in ``Storefront.__init__`` for the rest,
so a test or a deployment can change limits through the environment before the service starts.

Environment:

* ``SHOPREC_SERVING_CONFIG`` - another YAML file instead of ``serving/config.yaml``
* ``SHOPREC_SERVING_SET`` - space-separated ``key.sub=value`` overrides, e.g.
  ``"limits.k_max=50 batching.enabled=false"``
* ``SHOPREC_NEXT_ITEM_BUNDLE``, ``SHOPREC_CHURN_BUNDLE``, ``SHOPREC_STORE_URL``,
  ``SHOPREC_STATE_DIR``, ``SHOPREC_API_KEY`` - paths and secrets, read by the service itself
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from shoprec.config import StrictModel, apply_overrides, read_yaml, validate_config
from shoprec.store import StoreOptions

DEFAULT_CONFIG = Path(__file__).with_name("config.yaml")


class ServerConfig(StrictModel):
    workers: int = Field(default=1, ge=1, le=64)
    timeout_s: float = Field(default=10.0, gt=0, le=600)
    max_concurrency: int = Field(default=256, ge=1)
    torch_threads: int = Field(default=1, ge=1, le=64)
    access_log: bool = True
    access_log_skip: list[str] = Field(default_factory=list)
    metrics: bool = True

    def bentoml_options(self) -> dict[str, Any]:
        """``@bentoml.service`` keyword arguments for these settings."""
        # BentoML skips these itself; a list given here replaces its default, so keep them.
        skip = ["/metrics", "/healthz", "/livez", "/readyz", *self.access_log_skip]
        return {
            "workers": self.workers,
            "traffic": {"timeout": self.timeout_s, "max_concurrency": self.max_concurrency},
            "logging": {"access": {"enabled": self.access_log, "skip_paths": skip}},
            "metrics": {"enabled": self.metrics},
        }


class LimitsConfig(StrictModel):
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_batch_events: int = Field(default=500, ge=1)
    max_session_items: int = Field(default=200, ge=1)
    max_cart_items: int = Field(default=100, ge=1)
    k_min: int = Field(default=1, ge=1)
    k_max: int = Field(default=100, ge=1)
    max_recently_viewed: int = Field(default=100, ge=1)
    model_session_len: int = Field(default=50, ge=1)
    max_future_skew_s: float = Field(default=86_400.0, ge=0)

    @model_validator(mode="after")
    def _k_range(self) -> LimitsConfig:
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) must not exceed k_max ({self.k_max})")
        return self


class StoreConfig(StrictModel):
    url: str | None = None
    state_dir: str = ".shoprec-state"
    recent_cap: int = Field(default=100, ge=1)
    recent_ttl_days: float = Field(default=30.0, gt=0)
    session_cap: int = Field(default=200, ge=1)
    user_events_cap: int = Field(default=5000, ge=1)
    dedup_ttl_days: float = Field(default=7.0, gt=0)

    def options(self) -> StoreOptions:
        return StoreOptions(
            recent_cap=self.recent_cap,
            recent_ttl=timedelta(days=self.recent_ttl_days),
            session_cap=self.session_cap,
            user_events_cap=self.user_events_cap,
            dedup_ttl=timedelta(days=self.dedup_ttl_days),
        )


class BatchingConfig(StrictModel):
    enabled: bool = True
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    max_wait_ms: float = Field(default=0.0, ge=0, le=100)
    inline_alone: bool = True  # a lone request is scored on the event loop (no thread hop)
    # wait at most this long for as many requests as the largest of the last 8 batches
    # (0 = never: it helps closed-loop clients, hurts Poisson arrivals; experiments/ s9)
    gather_ms: float = Field(default=0.0, ge=0, le=100)


class ModelConfig(StrictModel):
    """How the next-item model is served (``shoprec.inference.Recommender``)."""

    coarse: Literal["auto", "int8", "bf16"] = "auto"  # the DotScorer's coarse pass
    state_cache: int = Field(default=10_000, ge=0)  # GRU session states kept (LRU); 0 = off
    # batches with at least this many sessions to run step the GRU as matrix products
    # (faster; equal to a lone run up to float32 rounding); 0 = every session on its own
    matrix_gru_from: int = Field(default=4, ge=0)


class ServingConfig(StrictModel):
    server: ServerConfig = Field(default_factory=ServerConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)


def load_serving_config(env: Mapping[str, str] | None = None) -> ServingConfig:
    """The YAML file named by ``SHOPREC_SERVING_CONFIG`` (else ``serving/config.yaml``) with
    ``SHOPREC_SERVING_SET`` overrides applied; unknown keys and bad values fail loudly."""
    env = os.environ if env is None else env
    path = Path(env.get("SHOPREC_SERVING_CONFIG") or DEFAULT_CONFIG)
    overrides = env.get("SHOPREC_SERVING_SET", "").split()
    data = apply_overrides(read_yaml(path), overrides)
    source = f"{path}" + (f" + SHOPREC_SERVING_SET={' '.join(overrides)}" if overrides else "")
    return validate_config(ServingConfig, data, source=source)
