"""A synthetic storefront: a realistic event log with known ground truth, fast at any size.

Why: the real public logs are small samples with no churn ground truth; the demo, the tests and
the scaling benchmarks need a log that looks like a store export (views, carts, purchases,
anonymous visitors, given session ids, ISO timestamps) and whose latent structure is known:
which items follow which (so next-item models have something to learn) and when each customer
stops coming back (so churn labels can be checked against the truth).

The generative story, all of it vectorized numpy (one loop over *positions within a session*,
never over rows, so 10M events take seconds):

* Catalogue: ``n_items`` items in ``n_categories`` categories of uneven size; category
  popularity and item popularity within a category are Zipf-distributed. Each item has
  ``n_related`` fixed neighbours (mostly in its category, some in a "complementary" partner
  category), with a skewed preference for the first ones: this is the sequential signal.
* Customers: a segment (loyal / regular / occasional) that scales the visit rate, the buying
  propensity and the lapse hazard; a signup time (before or during the horizon); a lapse time
  drawn from an exponential lifetime (after it, the customer never returns: churn ground
  truth); a favourite category; for some, a staple item re-bought on a cycle.
* Sessions: browse visits form a Poisson process between signup and lapse; staple customers
  add replenishment visits every ~cycle days; anonymous one-visit sessions make up
  ``anonymous_share`` of all sessions. A session that would not end before its customer's
  lapse (or the horizon end) is not generated, so no event follows a lapse.
* Inside a session: the first item comes from the favourite category (or by popularity); each
  next view is a related neighbour of the current item, another item of the same category,
  a jump to another category, or (rarely) a reload of the same item. Each view can lead to an
  add-to-cart a few seconds later; carted items are bought at checkout (after the last view)
  or abandoned.

Rough size: with the defaults one registered customer yields ~``EVENTS_PER_USER_DAY`` events
per day of horizon (anonymous visitors included); :meth:`SynthConfig.for_events` calibrates
``users`` for a target event count with a small pilot run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import polars as pl
from pydantic import Field, field_validator, model_validator

from shoprec import schema
from shoprec.config import StrictModel

__all__ = [
    "CSV_COLUMNS",
    "EVENTS_PER_USER_DAY",
    "SEGMENTS",
    "SynthConfig",
    "SynthResult",
    "generate",
    "write_synthetic",
]

# The export's header, in order (a plain storefront export: one row per event).
CSV_COLUMNS: Final = (
    "event_id",
    schema.USER_ID,
    schema.SESSION_ID,
    schema.ITEM_ID,
    schema.TIMESTAMP,
    schema.EVENT_TYPE,
    schema.CATEGORY,
    schema.PRICE,
    schema.QUANTITY,
)
ISO_FORMAT: Final = "%Y-%m-%dT%H:%M:%S%.3fZ"

# Segment name -> (share of customers, visit-rate factor, buy-propensity factor, lapse factor).
SEGMENTS: Final[dict[str, tuple[float, float, float, float]]] = {
    "loyal": (0.15, 3.0, 1.5, 0.3),
    "regular": (0.50, 1.0, 1.0, 1.0),
    "occasional": (0.35, 0.35, 0.6, 2.5),
}
# Measured with the defaults (60 days, seed 0): about 0.9 events per registered customer per
# day of horizon (55 per customer over 60 days), anonymous visitors included.
EVENTS_PER_USER_DAY: Final = 0.9

_DAY: Final = 86_400.0
_VIEW, _CART, _PURCHASE = 0, 1, 2
_EVENT_NAMES: Final = (schema.VIEW, schema.CART, schema.PURCHASE)


class SynthConfig(StrictModel):
    """Knobs of the synthetic storefront; every one has a single sensible default."""

    users: int = Field(default=2000, ge=1)  # registered customers
    days: int = Field(default=60, ge=1)  # horizon length
    seed: int = 0
    start: datetime = datetime(2024, 1, 1, tzinfo=UTC)  # horizon start (UTC)
    # catalogue
    n_items: int = Field(default=5000, ge=2)
    n_categories: int = Field(default=40, ge=1)
    zipf_exponent: float = Field(default=1.1, gt=0)  # item popularity within a category
    category_zipf_exponent: float = Field(default=0.8, ge=0)
    n_related: int = Field(default=6, ge=1)  # fixed "related" neighbours per item
    related_cross_category: float = Field(default=0.2, ge=0, le=1)  # share in partner category
    # browsing inside a session
    p_related: float = Field(default=0.55, ge=0, le=1)  # next view is a related neighbour
    p_stay_category: float = Field(default=0.8, ge=0, le=1)  # else: same category vs jump
    p_repeat_view: float = Field(default=0.04, ge=0, le=1)  # reload of the same item
    p_favourite_entry: float = Field(default=0.6, ge=0, le=1)  # first view in fav. category
    mean_session_views: float = Field(default=5.0, ge=1)
    max_session_views: int = Field(default=60, ge=1)
    mean_dwell_seconds: float = Field(default=45.0, gt=0)  # capped at 10 min: no inner gaps
    # funnel
    p_cart: float = Field(default=0.08, ge=0, le=1)  # view -> add-to-cart (x propensity)
    p_purchase: float = Field(default=0.45, ge=0, le=1)  # cart -> bought; rest abandoned
    # customers
    anonymous_share: float = Field(default=0.3, ge=0, lt=1)  # of all sessions
    visits_per_week: float = Field(default=1.0, gt=0)  # mean browse rate (regular segment)
    lapse_rate: float = Field(default=0.01, ge=0)  # daily hazard of stopping for good
    new_customer_share: float = Field(default=0.3, ge=0, le=1)  # sign up during the horizon
    replenish_share: float = Field(default=0.25, ge=0, le=1)  # customers with a staple item
    replenish_cycle_days: float = Field(default=14.0, gt=0)

    @field_validator("start")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        """A start without a zone is UTC (the canonical zone)."""
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @model_validator(mode="after")
    def _check(self) -> SynthConfig:
        if self.p_repeat_view + self.p_related > 1.0:
            raise ValueError("p_repeat_view + p_related must be <= 1")
        return self

    @classmethod
    def for_events(cls, n_events: int, **knobs: Any) -> SynthConfig:
        """A config whose log has about ``n_events`` events (within a few percent).

        Events scale linearly with ``users`` for fixed other knobs, so a pilot run with a
        few thousand customers gives the rate; the pilot uses the same seed (deterministic).
        """
        pilot_users = 3000
        pilot = cls(**{**knobs, "users": pilot_users})
        per_user = max(generate(pilot).events.height / pilot_users, 1e-9)
        return cls(**{**knobs, "users": max(1, round(n_events / per_user))})


@dataclass(frozen=True)
class SynthResult:
    """Generated events (canonical columns, chronological) and per-customer ground truth."""

    events: pl.DataFrame
    customers: pl.DataFrame
    config: SynthConfig


@dataclass(frozen=True)
class _Catalogue:
    category: np.ndarray  # category of each item (items grouped by category)
    cdf_key: np.ndarray  # category + within-category cumulative popularity, for sampling
    cat_cdf: np.ndarray  # cumulative category popularity
    related: np.ndarray  # (n_items, n_related) neighbour items
    price: np.ndarray


def _zipf_weights(n: int, exponent: float) -> np.ndarray:
    return 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent


def _draw_in_category(
    rng: np.random.Generator, cat: _Catalogue, categories: np.ndarray
) -> np.ndarray:
    """One popularity-weighted item per entry of ``categories`` (vectorized inverse CDF).

    ``cdf_key`` holds ``c + F_c(item)`` for an item of category c, so searching ``c + u``
    lands inside category c's block.
    """
    u = rng.random(categories.shape[0])
    idx = np.searchsorted(cat.cdf_key, categories + u, side="right")
    return np.minimum(idx, cat.category.shape[0] - 1)


def _draw_category(rng: np.random.Generator, cat: _Catalogue, n: int) -> np.ndarray:
    return np.searchsorted(cat.cat_cdf, rng.random(n), side="right")


def _catalogue(cfg: SynthConfig, rng: np.random.Generator) -> _Catalogue:
    n, c = cfg.n_items, min(cfg.n_categories, cfg.n_items)
    sizes = 1 + rng.multinomial(n - c, rng.dirichlet(np.full(c, 2.0)))
    category = np.repeat(np.arange(c), sizes)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.arange(n) - offsets[category] + 1
    w = 1.0 / rank.astype(np.float64) ** cfg.zipf_exponent
    csum = np.cumsum(w)
    before = np.concatenate([[0.0], csum])[offsets][category]  # total weight before block
    total = np.add.reduceat(w, offsets)[category]
    within = (csum - before) / total
    within[np.cumsum(sizes) - 1] = 1.0  # exact block ends: c + u (u < 1) stays inside
    cdf_key = category + within
    cw = _zipf_weights(c, cfg.category_zipf_exponent)
    cat_cdf = np.cumsum(cw) / cw.sum()
    cat_cdf[-1] = 1.0
    catalogue = _Catalogue(category, cdf_key, cat_cdf, np.empty((0, 0), np.int64), np.empty(0))

    # related neighbours: mostly popular items of the same category, some from a partner
    partner = rng.permutation(c)
    src_cat = np.repeat(category, cfg.n_related)
    cross = rng.random(src_cat.shape[0]) < cfg.related_cross_category
    related = _draw_in_category(rng, catalogue, np.where(cross, partner[src_cat], src_cat))
    related = related.reshape(n, cfg.n_related)

    level = np.exp(rng.normal(3.2, 0.9, size=c))  # category price level
    price = np.round(level[category] * np.exp(rng.normal(0.0, 0.35, size=n)), 2)
    price = np.maximum(price, 0.5)
    return _Catalogue(category, cdf_key, cat_cdf, related, price)


def _segment_ranges(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For groups of sizes ``counts``: the group of each element and its rank in the group."""
    group = np.repeat(np.arange(counts.shape[0]), counts)
    starts = np.cumsum(counts) - counts
    rank = np.arange(group.shape[0]) - starts[group]
    return group, rank


def generate(cfg: SynthConfig) -> SynthResult:
    """Generate the storefront log described in the module docstring (deterministic by seed)."""
    rng = np.random.default_rng(cfg.seed)
    cat = _catalogue(cfg, rng)
    horizon = cfg.days * _DAY
    n_users = cfg.users

    # --- customers ---------------------------------------------------------------------------
    seg_names = list(SEGMENTS)
    seg_share = np.array([SEGMENTS[s][0] for s in seg_names])
    seg_visit, seg_buy, seg_lapse = (
        np.array([SEGMENTS[s][k] for s in seg_names]) for k in (1, 2, 3)
    )
    segment = rng.choice(len(seg_names), size=n_users, p=seg_share / seg_share.sum())
    is_new = rng.random(n_users) < cfg.new_customer_share
    signup = np.where(
        is_new,
        rng.uniform(0.0, 0.9 * horizon, n_users),
        -rng.uniform(1.0, 365.0, n_users) * _DAY,
    )
    active_from = np.maximum(signup, 0.0)
    hazard = cfg.lapse_rate * seg_lapse[segment]
    with np.errstate(divide="ignore"):
        lifetime_days = np.where(hazard > 0, rng.exponential(1.0, n_users) / hazard, np.inf)
    lapse = active_from + lifetime_days * _DAY
    active_to = np.minimum(lapse, horizon)
    active_len = np.maximum(active_to - active_from, 0.0)
    visit_rate = cfg.visits_per_week / 7.0 * seg_visit[segment] * rng.gamma(2.0, 0.5, n_users)
    propensity = seg_buy[segment] * np.exp(rng.normal(-0.125, 0.5, n_users))
    favourite = _draw_category(rng, cat, n_users)
    has_staple = rng.random(n_users) < cfg.replenish_share * np.minimum(seg_buy[segment], 1.0)
    staple = _draw_in_category(rng, cat, favourite)
    cycle = cfg.replenish_cycle_days * _DAY * np.exp(rng.normal(0.0, 0.25, n_users))
    phase = rng.random(n_users)

    # --- sessions: browse (Poisson), replenish (cyclic), anonymous ------------------------------
    n_browse = rng.poisson(visit_rate * active_len / _DAY)
    b_user, _ = _segment_ranges(n_browse)
    b_start = active_from[b_user] + rng.random(b_user.shape[0]) * active_len[b_user]

    n_rep = np.where(
        has_staple, np.floor(np.maximum(active_len / cycle - phase, -1.0)) + 1, 0
    ).astype(np.int64)
    r_user, r_rank = _segment_ranges(n_rep)
    r_cycle = cycle[r_user]
    r_start = active_from[r_user] + (phase[r_user] + r_rank) * r_cycle
    r_start = r_start + rng.normal(0.0, 0.08, r_user.shape[0]) * r_cycle

    n_registered = b_user.shape[0] + r_user.shape[0]
    n_anon = round(n_registered * cfg.anonymous_share / (1.0 - cfg.anonymous_share))
    a_start = rng.random(n_anon) * horizon

    s_user = np.concatenate([b_user, r_user, np.full(n_anon, -1)])
    s_start = np.concatenate([b_start, r_start, a_start])
    s_replenish = np.concatenate(
        [np.zeros(b_user.shape[0], bool), np.ones(r_user.shape[0], bool), np.zeros(n_anon, bool)]
    )
    n_sessions = s_user.shape[0]
    registered = s_user >= 0
    s_user_safe = np.where(registered, s_user, 0)

    # --- views: a Markov walk per session, vectorized across sessions by position --------------
    length = np.asarray(rng.geometric(1.0 / cfg.mean_session_views, n_sessions))
    length = np.where(s_replenish, rng.geometric(0.5, n_sessions), length)
    length = np.minimum(length, cfg.max_session_views)
    v_offset = np.cumsum(length) - length
    n_views = int(length.sum())
    items = np.empty(n_views, dtype=np.int64)

    fav_entry = registered & (rng.random(n_sessions) < cfg.p_favourite_entry)
    first_cat = np.where(fav_entry, favourite[s_user_safe], _draw_category(rng, cat, n_sessions))
    first = _draw_in_category(rng, cat, first_cat)
    items[v_offset] = np.where(s_replenish, staple[s_user_safe], first)

    order = np.argsort(-length, kind="stable")  # sessions by length: active ones are a prefix
    n_active = np.searchsorted(
        -length[order], -np.arange(1, int(length.max(initial=1)) + 1), side="right"
    )
    p_rep, p_rel = cfg.p_repeat_view, cfg.p_related
    p_stay = p_rep + p_rel + (1.0 - p_rep - p_rel) * cfg.p_stay_category
    for k in range(1, n_active.shape[0]):
        sess = order[: n_active[k]]
        if sess.shape[0] == 0:
            break
        prev = items[v_offset[sess] + k - 1]
        u = np.asarray(rng.random(sess.shape[0]))
        nxt = prev.copy()
        rel = (u >= p_rep) & (u < p_rep + p_rel)
        j = np.minimum(rng.geometric(0.45, int(rel.sum())) - 1, cfg.n_related - 1)
        nxt[rel] = cat.related[prev[rel], j]
        stay = (u >= p_rep + p_rel) & (u < p_stay)
        nxt[stay] = _draw_in_category(rng, cat, cat.category[prev[stay]])
        jump = u >= p_stay
        nxt[jump] = _draw_in_category(rng, cat, _draw_category(rng, cat, int(jump.sum())))
        items[v_offset[sess] + k] = nxt

    # view times: session start + cumulative dwell (capped: no 30-minute gap inside a session)
    v_session = np.repeat(np.arange(n_sessions), length)
    dwell = np.clip(rng.exponential(cfg.mean_dwell_seconds, n_views), 2.0, 600.0)
    elapsed = np.cumsum(dwell) - dwell  # exclusive: view k+1 comes dwell[k] after view k
    elapsed -= elapsed[v_offset][v_session]  # 0 at each session's first view
    v_time = s_start[v_session] + elapsed
    view_end = v_time + dwell  # when the shopper leaves the page

    # --- funnel: view -> cart (a moment later) -> purchase at checkout or abandonment ----------
    v_user = s_user[v_session]
    v_prop = np.where(v_user >= 0, propensity[np.maximum(v_user, 0)], 0.5)
    p_cart = np.clip(cfg.p_cart * v_prop, 0.0, 0.9)
    is_staple_view = s_replenish[v_session] & (elapsed == 0.0)
    p_cart = np.where(is_staple_view, 0.95, p_cart)
    carted = rng.random(n_views) < p_cart
    c_idx = np.flatnonzero(carted)
    c_session = v_session[c_idx]
    c_time = v_time[c_idx] + dwell[c_idx] * rng.uniform(0.2, 0.8, c_idx.shape[0])
    c_qty = rng.geometric(0.8, c_idx.shape[0])
    p_buy = np.where(is_staple_view[c_idx], 0.9, cfg.p_purchase)
    bought = rng.random(c_idx.shape[0]) < p_buy
    last_view_end = view_end[v_offset + length - 1]
    checkout = last_view_end + rng.uniform(20.0, 180.0, n_sessions)
    # one order line per (session, item): an item carted twice is bought once, quantities
    # summed (otherwise the export would hold identical rows that validation drops)
    b_idx = c_idx[bought]
    line_key = v_session[b_idx].astype(np.int64) * cfg.n_items + items[b_idx]
    _, first_line, line_of = np.unique(line_key, return_index=True, return_inverse=True)
    p_qty = np.bincount(line_of, weights=c_qty[bought], minlength=first_line.shape[0])
    p_idx = b_idx[first_line]
    p_session = v_session[p_idx]
    p_time = checkout[p_session]

    s_end = last_view_end.copy()
    has_purchase = np.zeros(n_sessions, bool)
    has_purchase[p_session] = True
    s_end = np.where(has_purchase, checkout, s_end)
    # a session must lie inside its customer's active window (and the horizon); the 1 ms
    # margin survives the rounding of timestamps to milliseconds
    lower = np.where(registered, active_from[s_user_safe], 0.0)
    limit = np.where(registered, active_to[s_user_safe], horizon)
    s_keep = (s_start >= lower) & (s_end + 0.001 < limit)

    # --- assemble, chronological -----------------------------------------------------------------
    e_session = np.concatenate([v_session, c_session, p_session])
    e_item = np.concatenate([items, items[c_idx], items[p_idx]])
    e_time = np.concatenate([v_time, c_time, p_time])
    e_type = np.concatenate(
        [
            np.full(n_views, _VIEW, np.int8),
            np.full(c_idx.shape[0], _CART, np.int8),
            np.full(p_idx.shape[0], _PURCHASE, np.int8),
        ]
    )
    e_qty = np.concatenate([np.zeros(n_views, np.int64), c_qty, p_qty.astype(np.int64)])
    keep = s_keep[e_session]
    start_us = int(cfg.start.timestamp() * 1_000_000)
    # millisecond precision, as a store export would have
    e_us = start_us + np.round(e_time[keep] * 1000.0).astype(np.int64) * 1000

    # session ids numbered in order of start time among the kept sessions
    kept_sessions = np.flatnonzero(s_keep)
    session_rank = np.full(n_sessions, -1, np.int64)
    session_rank[kept_sessions[np.argsort(s_start[kept_sessions], kind="stable")]] = np.arange(
        kept_sessions.shape[0]
    )
    events = _events_frame(
        cfg,
        cat,
        session=session_rank[e_session[keep]],
        user=s_user[e_session[keep]],
        item=e_item[keep],
        time_us=e_us,
        etype=e_type[keep],
        qty=e_qty[keep],
    )
    customers = _customers_frame(
        cfg,
        cat,
        segment=segment,
        seg_names=seg_names,
        signup=signup,
        lapse=lapse,
        visit_rate=visit_rate,
        purchase_rate=_purchase_rate(cfg, visit_rate, propensity, has_staple, cycle),
        favourite=favourite,
        staple=np.where(has_staple, staple, -1),
        cycle=np.where(has_staple, cycle / _DAY, np.nan),
        events=events,
    )
    return SynthResult(events=events, customers=customers, config=cfg)


def _purchase_rate(
    cfg: SynthConfig,
    visit_rate: np.ndarray,
    propensity: np.ndarray,
    has_staple: np.ndarray,
    cycle: np.ndarray,
) -> np.ndarray:
    """Expected purchases per active day: browse visits x views x cart x buy, plus staples."""
    views = min(cfg.mean_session_views, cfg.max_session_views)
    browse = visit_rate * views * np.clip(cfg.p_cart * propensity, 0, 0.9) * cfg.p_purchase
    return browse + np.where(has_staple, 0.95 * 0.9 * _DAY / cycle, 0.0)


def _item_labels(cfg: SynthConfig) -> np.ndarray:
    """Shuffled public item numbers, so an id tells nothing about popularity or category."""
    return np.random.default_rng([cfg.seed, 1]).permutation(cfg.n_items)


def _id_table(prefix: str, n: int) -> pl.Series:
    """The ``n`` ids ``<prefix><k>`` (k zero-padded to a common width): built once, then
    gathered per event, which is far cheaper than formatting millions of strings."""
    width = len(str(max(n - 1, 0)))
    expr = pl.lit(prefix) + pl.int_range(0, n).cast(pl.String).str.zfill(width)
    return pl.select(expr.alias("id")).to_series()


def _gather(table: pl.Series, codes: np.ndarray, name: str) -> pl.Series:
    """``table[code]`` per row; a negative code gives null (anonymous user, no staple)."""
    idx = pl.Series(codes.astype(np.int64))
    idx = pl.select(pl.when(idx >= 0).then(idx).otherwise(None)).to_series()
    return table.gather(idx).alias(name)


def _events_frame(
    cfg: SynthConfig,
    cat: _Catalogue,
    *,
    session: np.ndarray,
    user: np.ndarray,
    item: np.ndarray,
    time_us: np.ndarray,
    etype: np.ndarray,
    qty: np.ndarray,
) -> pl.DataFrame:
    # chronological; same-time events of a session keep their generation order (view, cart,
    # purchase; purchases of one checkout share a timestamp)
    order = (
        pl.DataFrame({"t": time_us, "s": session})
        .with_row_index("i")
        .sort("t", "s", maintain_order=True)
        .get_column("i")
        .to_numpy()
    )
    item = item[order]
    qty = qty[order]
    item_ids = _id_table("P", cfg.n_items).gather(pl.Series(_item_labels(cfg)))
    return pl.DataFrame(
        [
            _gather(_id_table("C", cfg.users), user[order], schema.USER_ID),
            _gather(
                _id_table("S", int(session.max(initial=-1)) + 1), session[order], schema.SESSION_ID
            ),
            _gather(item_ids, item, schema.ITEM_ID),
            pl.Series(schema.TIMESTAMP, time_us[order]).cast(schema.UTC_TIMESTAMP),
            _gather(pl.Series(list(_EVENT_NAMES)), etype[order], schema.EVENT_TYPE),
            _gather(_id_table("cat", cat.cat_cdf.shape[0]), cat.category[item], schema.CATEGORY),
            pl.Series(schema.PRICE, cat.price[item], dtype=pl.Float64),
            pl.Series(schema.QUANTITY, np.where(qty > 0, qty, 0)).cast(pl.Int64),
        ]
    ).with_columns(
        pl.when(pl.col(schema.QUANTITY) > 0).then(pl.col(schema.QUANTITY)).otherwise(None)
    )


def _customers_frame(
    cfg: SynthConfig,
    cat: _Catalogue,
    *,
    segment: np.ndarray,
    seg_names: list[str],
    signup: np.ndarray,
    lapse: np.ndarray,
    visit_rate: np.ndarray,
    purchase_rate: np.ndarray,
    favourite: np.ndarray,
    staple: np.ndarray,
    cycle: np.ndarray,
    events: pl.DataFrame,
) -> pl.DataFrame:
    """Ground truth per registered customer, plus what the log shows of them."""
    start_us = int(cfg.start.timestamp() * 1_000_000)
    lapsed = lapse < cfg.days * _DAY
    lapse_us = start_us + np.round(np.where(lapsed, lapse, 0.0) * 1e6).astype(np.int64)
    item_ids = _id_table("P", cfg.n_items).gather(pl.Series(_item_labels(cfg)))
    truth = (
        pl.DataFrame(
            [
                _id_table("C", cfg.users).alias(schema.USER_ID),
                _gather(pl.Series(seg_names), segment, "segment"),
                pl.Series("signup_time", start_us + np.round(signup * 1e6).astype(np.int64)).cast(
                    schema.UTC_TIMESTAMP
                ),
                pl.Series("lapse_time", lapse_us).cast(schema.UTC_TIMESTAMP),
                pl.Series("_lapsed", lapsed),
                pl.Series("visit_rate", visit_rate),
                pl.Series("purchase_rate", purchase_rate),
                _gather(_id_table("cat", cat.cat_cdf.shape[0]), favourite, "favourite_category"),
                _gather(item_ids, staple, "staple_item"),
                pl.Series("replenish_cycle_days", cycle).fill_nan(None),
            ]
        )
        .with_columns(
            pl.when(pl.col("_lapsed"))
            .then(pl.col("lapse_time"))
            .otherwise(None)
            .alias("lapse_time")
        )
        .drop("_lapsed")
    )
    seen = (
        events.filter(pl.col(schema.USER_ID).is_not_null())
        .group_by(schema.USER_ID)
        .agg(
            pl.col(schema.SESSION_ID).n_unique().cast(pl.Int64).alias("n_sessions"),
            (pl.col(schema.EVENT_TYPE) == schema.PURCHASE)
            .sum()
            .cast(pl.Int64)
            .alias("n_purchases"),
            pl.col(schema.TIMESTAMP).max().alias("last_event_time"),
        )
    )
    return truth.join(seen, on=schema.USER_ID, how="left", maintain_order="left").with_columns(
        pl.col("n_sessions", "n_purchases").fill_null(0)
    )


def write_synthetic(cfg: SynthConfig, output: Path) -> Path:
    """Generate and write ``output/events.csv`` (the export), ``output/customers.parquet``
    (ground truth) and ``output/synth.json`` (the config); return the events path.

    The CSV is what a store would export: header :data:`CSV_COLUMNS`, ISO-8601 UTC timestamps
    with millisecond precision and a ``Z`` suffix, empty fields for missing values, rows in
    time order with ``event_id`` 1..n.
    """
    result = generate(cfg)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    events_path = output / "events.csv"
    result.events.with_row_index("event_id", offset=1).select(CSV_COLUMNS).write_csv(
        events_path, datetime_format=ISO_FORMAT, float_precision=2
    )
    result.customers.write_parquet(output / "customers.parquet")
    (output / "synth.json").write_text(
        json.dumps(cfg.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8"
    )
    return events_path
