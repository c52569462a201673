"""The shipped serving/config.yaml validates, and bad settings fail naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from serving.config import DEFAULT_CONFIG, ServingConfig, load_serving_config

from shoprec.config import ConfigError


def test_the_shipped_config_validates_and_matches_the_model_defaults() -> None:
    shipped = load_serving_config({})
    assert shipped == ServingConfig()  # the YAML documents the defaults, it does not change them
    assert DEFAULT_CONFIG.is_file()


def test_overrides_from_the_environment() -> None:
    cfg = load_serving_config({"SHOPREC_SERVING_SET": "limits.k_max=7 batching.enabled=false"})
    assert cfg.limits.k_max == 7 and cfg.batching.enabled is False


def test_model_serving_settings() -> None:
    cfg = load_serving_config({"SHOPREC_SERVING_SET": "model.state_cache=0 model.coarse=bf16"})
    assert cfg.model.state_cache == 0 and cfg.model.coarse == "bf16"
    assert ServingConfig().model.coarse == "auto" and ServingConfig().model.state_cache > 0


def test_another_file_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("limits:\n  max_batch_events: 9\n")
    cfg = load_serving_config({"SHOPREC_SERVING_CONFIG": str(tmp_path / "s.yaml")})
    assert cfg.limits.max_batch_events == 9 and cfg.limits.k_max == 100


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("limits.k_maxx=3", "limits.k_maxx: unknown key"),
        ("limits.k_min=50 limits.k_max=10", "k_min (50) must not exceed k_max (10)"),
        ("server.workers=0", "server.workers"),
        ("batching.enabled=perhaps", "batching.enabled"),
        ("model.coarse=fp8", "model.coarse"),
        ("model.state_cache=-1", "model.state_cache"),
    ],
)
def test_bad_settings_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_serving_config({"SHOPREC_SERVING_SET": override})


def test_store_options_follow_the_config() -> None:
    cfg = load_serving_config({"SHOPREC_SERVING_SET": "store.recent_cap=5 store.recent_ttl_days=1"})
    opts = cfg.store.options()
    assert opts.recent_cap == 5 and opts.recent_ttl.total_seconds() == 86400


def test_the_bentofile_ships_every_serving_module() -> None:
    import yaml

    root = DEFAULT_CONFIG.parent
    bentofile = yaml.safe_load((root / "bentofile.yaml").read_text())
    assert bentofile["service"] == "serving.service:Storefront"
    shipped = set(bentofile["include"])
    for module in root.glob("*.py"):
        assert f"serving/{module.name}" in shipped, f"{module.name} missing from bentofile"
    assert "serving/config.yaml" in shipped
    assert bentofile["python"]["lock_packages"] is False  # builds offline


def test_access_log_and_metrics_reach_bentoml() -> None:
    cfg = load_serving_config(
        {"SHOPREC_SERVING_SET": "server.access_log=false server.metrics=false server.workers=2"}
    )
    opts = cfg.server.bentoml_options()
    assert opts["workers"] == 2
    assert opts["logging"]["access"]["enabled"] is False
    assert opts["metrics"] == {"enabled": False}
    # BentoML's own probe paths stay out of the access log whatever is added
    shipped = load_serving_config({}).server.bentoml_options()
    assert {"/livez", "/readyz", "/metrics"} <= set(shipped["logging"]["access"]["skip_paths"])
    from _bentoml_sdk.service.config import validate

    validate(opts)  # type: ignore[arg-type]  # BentoML accepts every key and value
