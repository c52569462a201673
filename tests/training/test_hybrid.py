"""``shoprec hybrid tune`` / ``build`` on a tiny storefront: the grid's w=1 row is the neural
model's own validation score, the built bundle evaluates like any other, test is never tuned on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoprec.cli import main
from shoprec.data.dataset import PreparedDataset
from shoprec.errors import ShoprecError
from shoprec.evaluation.evaluate import evaluate_model
from shoprec.export import load_bundle
from shoprec.models.hybrid import Hybrid
from shoprec.training.config import ExperimentConfig
from shoprec.training.fit import fit
from shoprec.training.hybrid import tune_hybrid

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gru_bundle(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = ExperimentConfig.model_validate(
        {
            "name": "tiny_gru4rec_for_hybrid",
            "data": {"path": str(tiny_dataset)},
            "output_dir": str(tmp_path_factory.mktemp("hybrid")),
            "trainer": {"max_epochs": 1, "progress_bar": False, "patience": 0},
            "model": {"name": "gru4rec", "layers": [16]},
            "training": {"batch_size": 16, "n_sample": 16},
            "evaluation": {"enabled": False},
        }
    )
    return fit(config).bundle_dir


def test_the_neural_row_of_the_grid_is_the_neural_models_own_score(
    gru_bundle: Path, tiny_dataset: Path
) -> None:
    dataset = PreparedDataset.open(tiny_dataset)
    result = tune_hybrid(gru_bundle, dataset, weights=(1.0, 0.5), temperatures=(0.5, 1.0))
    assert len(result.rows) == 3  # (1, first tau) + 2 mixed points
    alone = next(r for r in result.rows if r["weight"] == 1.0)
    want = evaluate_model(load_bundle(gru_bundle).model, dataset, split="valid").metrics
    assert alone["valid/hr@20"] == pytest.approx(want["valid/hr@20"], abs=1e-12)
    assert alone["valid/mrr@20"] == pytest.approx(want["valid/mrr@20"], abs=1e-12)
    best = result.rows[0]
    assert all(best["valid/mrr@20"] >= r["valid/mrr@20"] for r in result.rows)
    assert result.best.weight == best["weight"]


def test_an_ensemble_of_two_bundles_is_tuned_and_built(
    gru_bundle: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """Two neural bundles make an ensemble: the grid's w=1 row is the ensemble's own score
    (its mean probability, scored like any model), and the built bundle holds both."""
    from shoprec.models.hybrid import HybridConfig
    from shoprec.training.hybrid import build_hybrid

    config = ExperimentConfig.model_validate(
        {
            "name": "tiny_gru4rec_for_hybrid_2",
            "seed": 7,
            "data": {"path": str(tiny_dataset)},
            "output_dir": str(tmp_path / "second"),
            "trainer": {"max_epochs": 1, "progress_bar": False, "patience": 0},
            "model": {"name": "gru4rec", "layers": [16]},
            "training": {"batch_size": 16, "n_sample": 16},
            "evaluation": {"enabled": False},
        }
    )
    second = fit(config).bundle_dir
    dataset = PreparedDataset.open(tiny_dataset)
    result = tune_hybrid([gru_bundle, second], dataset, weights=(1.0, 0.5), temperatures=(0.5,))
    assert result.members["neural"] == [str(gru_bundle), str(second)]
    out = build_hybrid([gru_bundle, second], dataset, tmp_path / "h", HybridConfig(weight=1.0))
    built = load_bundle(out)
    assert isinstance(built.model, Hybrid) and len(built.model.neurals) == 2
    alone = next(r for r in result.rows if r["weight"] == 1.0)
    ensemble = Hybrid(
        built.model.neurals, built.model.knn, HybridConfig(weight=1.0, temperature=0.5)
    )
    want = evaluate_model(ensemble, dataset, split="valid").metrics
    assert alone["valid/mrr@20"] == pytest.approx(want["valid/mrr@20"], abs=1e-12)
    single = tune_hybrid(gru_bundle, dataset, weights=(1.0,), temperatures=(0.5,)).rows[0]
    assert single["valid/mrr@20"] != alone["valid/mrr@20"]  # the second member does count


def test_refinement_tries_the_midpoints_around_the_best_point_and_scores_them_alike(
    gru_bundle: Path, tiny_dataset: Path
) -> None:
    """``refine=1`` adds the points halfway to the best point's grid neighbours; each refined
    row scores exactly what a plain grid holding that point gives, and the best row is the
    best over both passes."""
    from shoprec.training.hybrid import refine_grid

    dataset = PreparedDataset.open(tiny_dataset)
    weights, temps = (1.0, 0.8, 0.4), (0.5, 2.0)
    plain = tune_hybrid(gru_bundle, dataset, weights=weights, temperatures=temps)
    refined = tune_hybrid(gru_bundle, dataset, weights=weights, temperatures=temps, refine=1)
    first = [r for r in refined.rows if r["pass"] == 0]
    second = [r for r in refined.rows if r["pass"] == 1]
    assert {(r["weight"], r["temperature"]) for r in first} == {
        (r["weight"], r["temperature"]) for r in plain.rows
    }
    best = plain.rows[0]
    done = {(r["weight"], r["temperature"]) for r in plain.rows}
    want = refine_grid((best["weight"], best["temperature"]), done)
    assert want and sorted((r["weight"], r["temperature"]) for r in second) == want
    assert not done & set(want)
    w, tau = want[-1]
    alone = tune_hybrid(gru_bundle, dataset, weights=(w,), temperatures=(tau,))
    row = next(r for r in refined.rows if (r["weight"], r["temperature"]) == (w, tau))
    mixed = next(r for r in alone.rows if r["weight"] == w)
    assert row["valid/mrr@20"] == pytest.approx(mixed["valid/mrr@20"], abs=1e-12)
    assert refined.rows[0]["valid/mrr@20"] == max(r["valid/mrr@20"] for r in refined.rows)
    assert refined.rows[0]["valid/mrr@20"] >= best["valid/mrr@20"]


def test_refine_grid_stays_inside_what_was_tried() -> None:
    from shoprec.training.hybrid import refine_grid

    done = {(1.0, 0.25), (0.9, 0.25), (0.9, 0.5), (0.5, 0.25), (0.5, 0.5)}
    grid = refine_grid((0.9, 0.25), done)
    assert grid == [(0.7, 0.25), (0.7, 0.375), (0.9, 0.375), (0.95, 0.25), (0.95, 0.375)]
    assert all(w < 1.0 for w, _ in refine_grid((1.0, 0.25), done))
    assert refine_grid((1.0, 0.25), {(1.0, 0.25)}) == []  # nothing below to halve towards


def test_tuning_on_test_is_refused(gru_bundle: Path, tiny_dataset: Path) -> None:
    with pytest.raises(ShoprecError, match="never on test"):
        tune_hybrid(gru_bundle, PreparedDataset.open(tiny_dataset), split="test")


def test_cli_tune_then_build_then_evaluate(
    gru_bundle: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = tmp_path / "grid.json"
    args = ["hybrid", "tune", "--neural", str(gru_bundle), "--data", str(tiny_dataset)]
    assert main([*args, "--weights", "1", "0.6", "--temperatures", "1", "--output", str(grid)]) == 0
    tuned = json.loads(grid.read_text())
    assert {"weight", "temperature"} <= set(tuned["best"]) and len(tuned["rows"]) == 2
    refined = tmp_path / "refined.json"
    weights = ["--weights", "1", "0.6", "0.2", "--temperatures", "0.5", "2"]
    assert main([*args, *weights, "--refine", "1", "--output", str(refined)]) == 0
    rows = json.loads(refined.read_text())["rows"]
    assert {r["pass"] for r in rows} == {0, 1} and len(rows) > 5  # the grid's 5, then more
    out = tmp_path / "hybrid"
    build = ["hybrid", "build", "--neural", str(gru_bundle), "--data", str(tiny_dataset)]
    assert main([*build, "--tuned", str(grid), "--output", str(out)]) == 0
    bundle = load_bundle(out)
    assert isinstance(bundle.model, Hybrid)
    assert bundle.model.config.weight == tuned["best"]["weight"]
    assert bundle.meta["tuned"]["best"] == tuned["best"]
    assert bundle.aux  # the service's item neighbours came with the neural bundle
    metrics = evaluate_model(bundle.model, PreparedDataset.open(tiny_dataset)).metrics
    assert 0.0 <= metrics["test/hr@20"] <= 1.0
    assert main([*build, "--output", str(tmp_path / "x")]) == 2  # no weight given
    assert "give --weight" in capsys.readouterr().err


def test_reminder_shares_are_tuned_and_carried_into_the_build(
    gru_bundle: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """Every (w, tau) is tried with every reminder share; r = 0 rows are the grid without
    reminders, each row scores as a built hybrid with its knobs, and the best r reaches the
    bundle."""
    dataset = PreparedDataset.open(tiny_dataset)
    plain = tune_hybrid(gru_bundle, dataset, weights=(1.0, 0.5), temperatures=(1.0,))
    result = tune_hybrid(
        gru_bundle,
        dataset,
        weights=(1.0, 0.5),
        temperatures=(1.0,),
        reminders=(0.0, 0.3),
        reminder_decay="last",
    )
    assert {(r["weight"], r["reminder"]) for r in result.rows} == {
        (1.0, 0.0),
        (1.0, 0.3),
        (0.5, 0.0),
        (0.5, 0.3),
    }
    two_taus = tune_hybrid(
        gru_bundle, dataset, weights=(0.5,), temperatures=(1.0, 2.0), reminders=(0.0, 0.3)
    )  # w = 1 is always tried; with a reminder its temperature matters, so every one is
    assert sorted((r["weight"], r["temperature"], r["reminder"]) for r in two_taus.rows) == [
        (0.5, 1.0, 0.0),
        (0.5, 1.0, 0.3),
        (0.5, 2.0, 0.0),
        (0.5, 2.0, 0.3),
        (1.0, 1.0, 0.0),
        (1.0, 1.0, 0.3),
        (1.0, 2.0, 0.3),
    ]
    for row in plain.rows:
        same = next(r for r in result.rows if r["weight"] == row["weight"] and r["reminder"] == 0.0)
        assert same["valid/mrr@20"] == row["valid/mrr@20"]
    from shoprec.models.hybrid import HybridConfig
    from shoprec.training.hybrid import build_hybrid

    bundle = load_bundle(gru_bundle)
    for row in result.rows:
        knobs = HybridConfig(
            weight=row["weight"],
            temperature=1.0,
            reminder=row["reminder"],
            reminder_decay="last",
        )
        out = build_hybrid(gru_bundle, dataset, tmp_path / "h", knobs)
        built = load_bundle(out).model
        assert built.config == knobs and bundle.model.n_items == built.n_items
        metrics = evaluate_model(built, dataset, split="valid").metrics
        assert metrics["valid/mrr@20"] == pytest.approx(row["valid/mrr@20"], abs=1e-12)
    assert result.best.reminder == result.rows[0]["reminder"]
    assert result.best.reminder_decay == "last"
    grid = tmp_path / "grid.json"
    members = ["--neural", str(gru_bundle), "--data", str(tiny_dataset)]
    tune = ["hybrid", "tune", *members, "--weights", "0.5", "--temperatures", "1"]
    assert (
        main([*tune, "--reminders", "0.25", "--reminder-decay", "last", "--output", str(grid)]) == 0
    )
    tuned = json.loads(grid.read_text())
    assert {r["reminder"] for r in tuned["rows"]} == {0.0, 0.25}  # w = 1, r = 0 is always in
    assert tuned["best"]["reminder"] == tuned["rows"][0]["reminder"]
    assert tuned["best"]["reminder_decay"] == "last"
    out = tmp_path / "cli"
    build = ["hybrid", "build", *members, "--tuned", str(grid), "--output", str(out)]
    assert main(build) == 0
    assert load_bundle(out).model.config.reminder == tuned["best"]["reminder"]
    assert main([*build, "--reminder", "0.25"]) == 0  # an option overrides the tuned point
    assert load_bundle(out).model.config.reminder == 0.25
    assert load_bundle(out).model.config.reminder_decay == "last"
    assert main([*build, "--reminder", "0"]) == 0
    assert load_bundle(out).model.config.reminder == 0.0
    with pytest.raises(ShoprecError, match="reminder shares"):
        tune_hybrid(gru_bundle, dataset, reminders=(1.0,))


def test_knn_settings_are_tuned_with_and_carried_into_the_build(
    gru_bundle: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = tmp_path / "grid.json"
    members = ["--neural", str(gru_bundle), "--data", str(tiny_dataset)]
    tune = ["hybrid", "tune", *members, "--weights", "0.6", "--temperatures", "1"]
    assert main([*tune, "--knn-set", "idf_weighting=2", "--output", str(grid)]) == 0
    tuned = json.loads(grid.read_text())
    assert tuned["members"]["knn_config"]["idf_weighting"] == 2.0
    out = tmp_path / "hybrid"
    assert main(["hybrid", "build", *members, "--tuned", str(grid), "--output", str(out)]) == 0
    built = load_bundle(out)
    assert built.model.knn.config.idf_weighting == 2.0  # the tuned kNN, not the defaults
    assert built.meta["members"]["knn"]["config"]["idf_weighting"] == 2.0
    explicit = ["--knn-set", "idf_weighting=0", "--output", str(tmp_path / "h0")]
    assert main(["hybrid", "build", *members, "--tuned", str(grid), *explicit]) == 0
    assert load_bundle(tmp_path / "h0").model.knn.config.idf_weighting == 0.0
    capsys.readouterr()
    assert main([*tune, "--knn-set", "no_such_knob=1"]) == 2
    assert "no_such_knob" in capsys.readouterr().err
    assert main([*tune, "--knn-set", "idf_weighting"]) == 2  # not KEY=VALUE


def test_a_bundle_from_another_catalogue_is_refused(
    gru_bundle: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    from shoprec.config import load_config
    from shoprec.data.config import DataConfig
    from shoprec.data.prepare import prepare
    from tests.conftest import REPO_ROOT

    preset = REPO_ROOT / "configs" / "data" / "synthetic.yaml"
    cfg = load_config(
        DataConfig,
        preset,
        ["split.test_days=5", "split.valid_days=5", "filters.min_item_support=3"],
    )
    other = tmp_path / "other"
    prepare(cfg, output=other, input_path=str(tiny_dataset.parent / "raw" / "events.csv"))
    with pytest.raises(ShoprecError, match="item index differs"):
        tune_hybrid(gru_bundle, PreparedDataset.open(other))


def test_the_service_recommender_serves_a_hybrid_bundle(
    gru_bundle: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """A hybrid bundle goes through the service's Recommender like any other: its lists equal
    the hybrid's own full ranking, with reasons."""
    import torch

    from shoprec.inference import Recommender
    from shoprec.models.base import left_pad
    from shoprec.models.hybrid import HybridConfig
    from shoprec.training.hybrid import build_hybrid

    dataset = PreparedDataset.open(tiny_dataset)
    out = build_hybrid(gru_bundle, dataset, tmp_path / "h", HybridConfig(weight=0.5))
    bundle = load_bundle(out)
    rec = Recommender(bundle)
    session = bundle.item_ids[1:4]
    got = [r.item_id for r in rec.next_items(session, k=5)]
    scores = bundle.model.score(left_pad([[1, 2, 3]]))[0, 1:]
    order = torch.argsort(-scores, stable=True)[:5] + 1
    assert got == [bundle.item_ids[i] for i in order.tolist()]
    assert all(r.reason for r in rec.next_items(session, k=5))
