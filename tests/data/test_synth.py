"""The synthetic storefront: determinism, schema, funnel order, lapse truth, learnable signal."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from shoprec import schema
from shoprec.data.synth import (
    CSV_COLUMNS,
    SynthConfig,
    SynthResult,
    generate,
    lapse_probability,
    write_synthetic,
)

CFG = SynthConfig(users=600, days=45, seed=7)


@pytest.fixture(scope="module")
def result() -> SynthResult:
    return generate(CFG)


def test_deterministic_by_seed(result: SynthResult) -> None:
    again = generate(CFG)
    assert again.events.equals(result.events)
    assert again.customers.equals(result.customers)
    other = generate(CFG.model_copy(update={"seed": 8}))
    assert not other.events.equals(result.events)


def test_schema_and_time_range(result: SynthResult) -> None:
    ev = result.events
    assert dict(ev.schema) == {**schema.EVENT_SCHEMA, **schema.OPTIONAL_SCHEMA}
    assert set(ev[schema.EVENT_TYPE].unique()) == set(schema.CORE_EVENT_TYPES)
    for col in (schema.SESSION_ID, schema.ITEM_ID, schema.TIMESTAMP, schema.CATEGORY):
        assert ev[col].null_count() == 0
    ts = ev[schema.TIMESTAMP]
    assert ts.is_sorted()
    assert ts.min() >= CFG.start  # type: ignore[operator]
    assert ts.max() < CFG.start + timedelta(days=CFG.days)  # type: ignore[operator]
    assert (ev[schema.PRICE] > 0).all()
    qty = ev.filter(pl.col(schema.EVENT_TYPE) != schema.VIEW)[schema.QUANTITY]
    assert qty.null_count() == 0 and (qty >= 1).all()
    assert ev.filter(pl.col(schema.EVENT_TYPE) == schema.VIEW)[schema.QUANTITY].null_count() == (
        ev.filter(pl.col(schema.EVENT_TYPE) == schema.VIEW).height
    )
    # no identical rows (validation would drop them as duplicates)
    assert not ev.is_duplicated().any()
    # no 30-minute hole inside a session: the given ids agree with the gap rule
    gaps = ev.select(pl.col(schema.TIMESTAMP).diff().over(schema.SESSION_ID).max()).item()
    assert gaps < timedelta(minutes=30)
    # a session belongs to one visitor, and one item has one category and one price
    per_session = ev.group_by(schema.SESSION_ID).agg(pl.col(schema.USER_ID).n_unique())
    assert (per_session[schema.USER_ID] == 1).all()
    per_item = ev.group_by(schema.ITEM_ID).agg(pl.col(schema.CATEGORY, schema.PRICE).n_unique())
    assert (per_item[schema.CATEGORY] == 1).all() and (per_item[schema.PRICE] == 1).all()


def test_funnel_order(result: SynthResult) -> None:
    """Every cart follows a view of that item in the session; every purchase follows a cart."""
    ev = result.events.with_row_index("row")
    key = [schema.SESSION_ID, schema.ITEM_ID]
    for later, earlier in ((schema.CART, schema.VIEW), (schema.PURCHASE, schema.CART)):
        first_earlier = (
            ev.filter(pl.col(schema.EVENT_TYPE) == earlier)
            .group_by(key)
            .agg(pl.col("row").min().alias("first_row"))
        )
        checked = ev.filter(pl.col(schema.EVENT_TYPE) == later).join(
            first_earlier, on=key, how="left"
        )
        assert checked.height > 0
        assert checked["first_row"].null_count() == 0
        assert (checked["first_row"] < checked["row"]).all()
    # carts get abandoned: fewer purchases than carts, but purchases happen
    counts = dict(ev.group_by(schema.EVENT_TYPE).len().iter_rows())
    assert 0 < counts[schema.PURCHASE] < counts[schema.CART] < counts[schema.VIEW]


def test_no_events_after_lapse_and_truth_consistent(result: SynthResult) -> None:
    cust = result.customers
    assert cust.height == CFG.users
    assert cust[schema.USER_ID].n_unique() == CFG.users
    lapsed = cust.filter(pl.col("lapse_time").is_not_null())
    assert 0 < lapsed.height < cust.height
    joined = result.events.join(lapsed, on=schema.USER_ID, how="inner")
    assert joined.height > 0  # lapsed customers were active before lapsing
    assert (joined[schema.TIMESTAMP] < joined["lapse_time"]).all()
    assert (joined[schema.TIMESTAMP] >= joined["signup_time"]).all()
    # ground-truth columns match the log
    seen = result.events.filter(pl.col(schema.USER_ID).is_not_null())
    assert cust["n_sessions"].sum() == seen[schema.SESSION_ID].n_unique()
    assert set(cust["segment"].unique()) == {"loyal", "regular", "occasional"}
    # the disengagement onset precedes the lapse (equal for an abrupt lapse)
    both = cust.filter(pl.col("decline_start").is_not_null() & pl.col("lapse_time").is_not_null())
    assert both.height > 0 and (both["decline_start"] <= both["lapse_time"]).all()
    # loyal customers visit more than occasional ones, as their latent rate says
    by_seg = dict(cust.group_by("segment").agg(pl.col("n_sessions").mean()).iter_rows())
    assert by_seg["loyal"] > by_seg["regular"] > by_seg["occasional"]


LAPSE_CFG = SynthConfig(users=3000, days=200, seed=11)
LAPSE_T = LAPSE_CFG.start + timedelta(days=120)
LAPSE_H = 30


@pytest.fixture(scope="module")
def lapse_cohort() -> tuple[SynthResult, pl.DataFrame]:
    """Customers active in the 60 days before T and alive at T: their session trend (last 30
    days vs the 30 before, in [-1, 1]) and whether they lapse in (T, T + H] (the truth)."""
    shop = generate(LAPSE_CFG)
    t = LAPSE_T
    window = shop.events.filter(
        pl.col(schema.USER_ID).is_not_null()
        & (pl.col(schema.TIMESTAMP) >= t - timedelta(days=60))
        & (pl.col(schema.TIMESTAMP) < t)
    )
    recent = pl.col(schema.TIMESTAMP) >= t - timedelta(days=30)
    sessions = pl.col(schema.SESSION_ID)
    trend = window.group_by(schema.USER_ID).agg(
        sessions.filter(recent).n_unique().cast(pl.Float64).alias("recent"),
        sessions.filter(~recent).n_unique().cast(pl.Float64).alias("earlier"),
    )
    lapse = pl.col("lapse_time")
    cohort = (
        trend.with_columns(
            ((pl.col("recent") - pl.col("earlier")) / (pl.col("recent") + pl.col("earlier"))).alias(
                "trend"
            )
        )
        .join(shop.customers.select(schema.USER_ID, "lapse_time"), on=schema.USER_ID)
        .filter(lapse.is_null() | (lapse > t))
        .with_columns(
            (lapse.is_not_null() & (lapse <= t + timedelta(days=LAPSE_H))).alias("lapses")
        )
    )
    return shop, cohort


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC by the rank-sum formula (ties count half)."""
    ranks = pl.Series(score).rank("average").to_numpy()
    pos = y.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_lapse_is_preceded_by_declining_activity(
    lapse_cohort: tuple[SynthResult, pl.DataFrame],
) -> None:
    """Customers who lapse in (T, T + H] were already visiting less before T, unlike those
    who stay: the precursor a churn model can read (a memoryless lapse would show none)."""
    _, cohort = lapse_cohort
    lapsers = cohort.filter(pl.col("lapses"))
    stayers = cohort.filter(~pl.col("lapses"))
    assert lapsers.height >= 50 and stayers.height >= 500
    gap = stayers["trend"].mean() - lapsers["trend"].mean()  # type: ignore[operator]
    assert gap > 0.2
    auc = _auc(cohort["lapses"].to_numpy(), -cohort["trend"].to_numpy())
    assert 0.65 < auc < 0.95  # informative, far from a give-away


def test_true_lapse_probability_is_calibrated_and_imperfect(
    lapse_cohort: tuple[SynthResult, pl.DataFrame],
) -> None:
    """lapse_probability (the latent state at T) predicts the lapse well but not perfectly,
    and its mean matches the lapse rate; it is undefined (NaN) only for customers gone or not
    yet signed up at T."""
    shop, cohort = lapse_cohort
    prob = lapse_probability(shop.customers, LAPSE_T, LAPSE_H, LAPSE_CFG)
    cust = shop.customers.with_columns(pl.Series("p", prob))
    lapse = pl.col("lapse_time")
    undefined = cust.filter(pl.col("p").is_nan())
    gone = lapse.is_not_null() & (lapse <= LAPSE_T)
    assert undefined.filter(~gone & (pl.col("signup_time") <= LAPSE_T)).height == 0
    scored = cohort.join(cust.select(schema.USER_ID, "p"), on=schema.USER_ID)
    y = scored["lapses"].to_numpy()
    p = scored["p"].to_numpy()
    assert np.all((p >= 0) & (p <= 1))
    assert abs(p.mean() - y.mean()) < 0.03
    assert 0.85 < _auc(y, p) < 0.995


def test_anonymous_single_session_visitors(result: SynthResult) -> None:
    sessions = result.events.group_by(schema.SESSION_ID).agg(
        pl.col(schema.USER_ID).first().is_null().alias("anon")
    )
    share = sessions["anon"].mean()
    assert isinstance(share, float)
    assert abs(share - CFG.anonymous_share) < 0.05


def test_repeat_purchases_of_staples(result: SynthResult) -> None:
    staples = result.customers.filter(pl.col("staple_item").is_not_null())
    buys = result.events.filter(pl.col(schema.EVENT_TYPE) == schema.PURCHASE).join(
        staples.select(schema.USER_ID, "staple_item"), on=schema.USER_ID
    )
    rebuys = (
        buys.filter(pl.col(schema.ITEM_ID) == pl.col("staple_item"))
        .group_by(schema.USER_ID)
        .agg(pl.col(schema.SESSION_ID).n_unique().alias("orders"))
    )
    assert rebuys.filter(pl.col("orders") >= 2).height >= 0.3 * staples.height


def test_sessions_are_coherent_and_learnable(result: SynthResult) -> None:
    """Views mostly stay in a category, and a successor model beats popularity by far."""
    views = result.events.filter(pl.col(schema.EVENT_TYPE) == schema.VIEW)
    pairs = views.with_columns(
        pl.col(schema.ITEM_ID).shift(-1).over(schema.SESSION_ID).alias("next"),
        pl.col(schema.CATEGORY).shift(-1).over(schema.SESSION_ID).alias("next_cat"),
    ).filter(pl.col("next").is_not_null() & (pl.col("next") != pl.col(schema.ITEM_ID)))
    same_cat = (pairs[schema.CATEGORY] == pairs["next_cat"]).mean()
    assert isinstance(same_cat, float) and same_cat > 0.7
    # fit on the first 70 % of sessions (by id order = start order), test on the rest
    sid_no = pl.col(schema.SESSION_ID).str.slice(1).cast(pl.Int64)
    cut = views[schema.SESSION_ID].str.slice(1).cast(pl.Int64).quantile(0.7)
    fit, test = pairs.filter(sid_no < cut), pairs.filter(sid_no >= cut)
    top = (
        fit.group_by(schema.ITEM_ID, "next")
        .len()
        .sort("len", "next", descending=[True, False])
        .group_by(schema.ITEM_ID, maintain_order=True)
        .head(10)
        .group_by(schema.ITEM_ID)
        .agg(pl.col("next").alias("top"))
    )
    hits = test.join(top, on=schema.ITEM_ID, how="left").select(
        pl.col("top").list.contains(pl.col("next")).fill_null(False).mean()
    )
    popular = fit["next"].value_counts(sort=True).head(10)["next"]
    pop_hits = test["next"].is_in(popular.implode()).mean()
    assert isinstance(pop_hits, float)
    assert hits.item() > 0.3
    assert hits.item() > 3 * pop_hits


def test_write_synthetic_export(tmp_path: Path) -> None:
    cfg = SynthConfig(users=50, days=10, seed=3)
    path = write_synthetic(cfg, tmp_path / "out")
    assert path == tmp_path / "out" / "events.csv"
    header = path.read_text(encoding="utf-8").splitlines()[0]
    assert header == ",".join(CSV_COLUMNS)
    raw = pl.read_csv(path, infer_schema=False)
    assert raw["timestamp"].str.contains(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$").all()
    assert raw["event_id"].cast(pl.Int64).to_list() == list(range(1, raw.height + 1))
    back = raw.select(
        pl.col(schema.USER_ID),
        pl.col(schema.SESSION_ID),
        pl.col(schema.ITEM_ID),
        pl.col(schema.TIMESTAMP).str.to_datetime(time_zone="UTC"),
        pl.col(schema.EVENT_TYPE),
        pl.col(schema.CATEGORY),
        pl.col(schema.PRICE).cast(pl.Float64),
        pl.col(schema.QUANTITY).cast(pl.Int64),
    )
    assert back.equals(generate(cfg).events)
    truth = pl.read_parquet(tmp_path / "out" / "customers.parquet")
    assert truth.height == 50 and "lapse_time" in truth.columns
    saved = json.loads((tmp_path / "out" / "synth.json").read_text(encoding="utf-8"))
    assert SynthConfig.model_validate(saved) == cfg


def test_for_events_and_scaling() -> None:
    cfg = SynthConfig.for_events(40_000, days=30, seed=1)
    n = generate(cfg).events.height
    assert 0.9 * 40_000 < n < 1.1 * 40_000
    assert cfg.days == 30 and cfg.seed == 1


def test_config_is_strict() -> None:
    with pytest.raises(ValidationError):
        SynthConfig(users=10, colour="red")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        SynthConfig(p_related=0.9, p_repeat_view=0.2)


def test_synthetic_preset_prepares(tmp_path: Path, repo_root: Path) -> None:
    """configs/data/synthetic.yaml reads the export as written, and the split holds."""
    from datetime import datetime

    from shoprec.config import load_config
    from shoprec.data.config import DataConfig
    from shoprec.data.dataset import PreparedDataset
    from shoprec.data.prepare import prepare

    csv = write_synthetic(SynthConfig(users=300, days=30, seed=5), tmp_path / "synth")
    config = load_config(DataConfig, repo_root / "configs" / "data" / "synthetic.yaml")
    manifest = prepare(config, output=tmp_path / "prepared", input_path=str(csv))
    assert manifest["rows_quarantined"] == 0 and manifest["rows_duplicate"] == 0
    assert manifest["rows_accepted"] == manifest["rows_read"]
    ds = PreparedDataset.open(tmp_path / "prepared")
    assert ds.n_items > 0 and ds.cases("test").height > 0 and ds.cases("valid").height > 0
    test_cut = datetime.fromisoformat(manifest["split"]["test_cutoff"])
    valid_cut = datetime.fromisoformat(manifest["split"]["valid_cutoff"])
    ts = schema.TIMESTAMP
    assert ds.events("test").select(pl.col(ts).min()).collect().item() >= test_cut
    assert ds.events("train").select(pl.col(ts).max()).collect().item() < valid_cut
