"""A synthetic storefront: a realistic event log with known ground truth, fast at any size.

Why: the real public logs are small samples with no churn ground truth; the demo, the tests and
the scaling benchmarks need a log that looks like a store export (views, carts, purchases,
anonymous visitors, given session ids, ISO timestamps) and whose latent structure is known:
which items follow which (so next-item models have something to learn) and when each customer
stops coming back, and how that showed beforehand (so churn labels and churn models can be
checked against the truth).

The generative story, all of it vectorized numpy (one loop over *positions within a session*,
never over rows, so 10M events take seconds):

* Catalogue: ``n_items`` items in ``n_categories`` categories of uneven size; category
  popularity and item popularity within a category are Zipf-distributed. Each item has
  ``n_related`` fixed neighbours (mostly in its category, some in a "complementary" partner
  category), with a skewed preference for the first ones: this is the sequential signal.
* Customers: a segment (loyal / regular / occasional) that scales the visit rate, the buying
  propensity and the disengagement hazard; a signup time (before or during the horizon); a
  favourite category; for some, a staple item re-bought on a cycle.
* Engagement and lapse: each customer has a latent engagement ``g(t)`` in (0, 1] that scales
  everything they do (below). A healthy customer has ``g = 1`` apart from *temporary dips*
  (busy spells, holidays: about ``dips_per_year`` of them, ~``dip_mean_days`` long, engagement
  x 0.15..0.6, then back to normal); dips carry no lapse risk. At a random *disengagement
  onset* (daily hazard ``lapse_rate`` x the segment's factor, memoryless) engagement starts to
  decay, ``g = exp(-(t - onset) / tau)`` with a per-customer ``tau`` around
  ``decline_tau_days``, and the lapse hazard rises as engagement falls:
  ``decline_hazard x (1 - g) ** decline_hazard_power`` per day. The lapse time (after it the
  customer never returns: the churn ground truth) is drawn from that hazard, so the
  disengagement phase has a random length (with the defaults 5% / 50% / 95% quantiles of
  about 34 / 56 / 83 days; engagement is down to ~0.15 at the lapse), during which the
  visit rhythm slows down, sessions get shorter, fewer views turn into carts and more carts
  are abandoned. A share ``abrupt_lapse_share`` of onsets are lapses with no warning at all
  (moved away, switched store overnight). Customers who signed up before the horizon start
  their engagement clock up to 120 days earlier and are drawn alive at the horizon start, so
  some are already disengaging when it opens. Nothing in the log marks the onset: a model
  has to read it from the thinning activity, and a dip looks like an onset for a while.
  :func:`lapse_probability` gives the true probability of a lapse in a horizon from the
  latent state (what an oracle that knows the onset could say): the ceiling for any model.
* Sessions: browse visits follow a personal rhythm between signup and lapse, a renewal
  process with gamma gaps (shape around ``visit_regularity``; 1 would be Poisson) at the
  customer's visit rate x ``g(t)`` (the rhythm is run in time stretched by the decline, and a
  dip skips visits); staple customers add replenishment visits every ~cycle days, each
  skipped with probability ``1 - g(t)`` (purchases space out); anonymous one-visit sessions
  make up ``anonymous_share`` of all sessions. A session that would not end before its
  customer's lapse (or the horizon end) is not generated, so no event follows a lapse.
* Inside a session: the first item comes from the favourite category (or by popularity); each
  next view is a related neighbour of the current item, another item of the same category,
  a jump to another category, or (rarely) a reload of the same item. The mean number of views
  is ``mean_session_views x (0.4 + 0.6 g)``. Each view can lead to an add-to-cart a few
  seconds later (probability x ``sqrt(g)``); carted items are bought at checkout (after the
  last view) with probability ``p_purchase x (0.5 + 0.5 g)``, or abandoned.

Rough size: with the defaults one registered customer yields ~``EVENTS_PER_USER_DAY`` events
per day of horizon (anonymous visitors included); :meth:`SynthConfig.for_events` calibrates
``users`` for a target event count with a small pilot run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from math import comb
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
    "lapse_probability",
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

# Segment name -> (share of customers, visit-rate factor, buy-propensity factor, factor on the
# disengagement hazard).
SEGMENTS: Final[dict[str, tuple[float, float, float, float]]] = {
    "loyal": (0.15, 3.0, 1.5, 0.3),
    "regular": (0.50, 1.0, 1.0, 1.0),
    "occasional": (0.35, 0.35, 0.6, 2.5),
}
# Measured with the defaults (60 days, seeds 0 and 1): about 0.96 events per registered customer
# per day of horizon (58 per customer over 60 days), anonymous visitors included.
EVENTS_PER_USER_DAY: Final = 0.96

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
    visit_regularity: float = Field(default=3.0, ge=1)  # gamma shape of gaps between visits
    # engagement and lapse (module docstring)
    lapse_rate: float = Field(default=0.004, ge=0)  # daily hazard of a disengagement onset
    decline_tau_days: float = Field(default=30.0, gt=0)  # engagement decay time once disengaging
    decline_hazard: float = Field(default=0.2, gt=0)  # daily lapse hazard at zero engagement
    decline_hazard_power: int = Field(default=8, ge=1, le=16)  # hazard ~ (1 - engagement) ** k
    abrupt_lapse_share: float = Field(default=0.05, ge=0, le=1)  # onsets that lapse at once
    dips_per_year: float = Field(default=3.0, ge=0)  # temporary engagement dips (no lapse risk)
    dip_mean_days: float = Field(default=10.0, gt=0)
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


_WARMUP_DAYS: Final = 120.0  # engagement clock of pre-horizon customers starts this early


def _cumulative_hazard(cfg: SynthConfig, elapsed_days: np.ndarray, tau_days: np.ndarray) -> Any:
    """Lapse hazard integrated over the first ``elapsed_days`` of a disengagement phase,
    ``int_0^d decline_hazard * (1 - exp(-u / tau)) ** k du`` (k = ``decline_hazard_power``),
    in closed form: ``d + sum_j C(k, j) (-1)^j tau / j (1 - exp(-j d / tau))``."""
    d = np.maximum(elapsed_days, 0.0)
    k = cfg.decline_hazard_power
    total = d.copy()
    for j in range(1, k + 1):
        total = total + comb(k, j) * (-1) ** j * tau_days / j * -np.expm1(-j * d / tau_days)
    return cfg.decline_hazard * np.maximum(total, 0.0)


def _phase_length(cfg: SynthConfig, e: np.ndarray, tau_days: np.ndarray) -> np.ndarray:
    """Days from onset to lapse: solves ``cumulative hazard = e`` (e ~ Exp(1)) by Newton's
    method from the upper bound ``e / h + k tau`` (the function is increasing and convex, so
    the iterates fall monotonically onto the root)."""
    k = cfg.decline_hazard_power
    d = e / cfg.decline_hazard + k * tau_days
    for _ in range(100):
        slope = cfg.decline_hazard * (-np.expm1(-d / tau_days)) ** k
        step = (_cumulative_hazard(cfg, d, tau_days) - e) / np.maximum(slope, 1e-12)
        d = np.maximum(d - step, 0.0)
        if float(np.max(np.abs(step), initial=0.0)) < 1e-6:
            break
    return np.asarray(d)


def _engagement_clock(
    cfg: SynthConfig,
    rng: np.random.Generator,
    segment: np.ndarray,
    signup: np.ndarray,
    tau: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Disengagement onset and lapse time (seconds from the horizon start) per customer.

    The clock starts at signup (at most ``_WARMUP_DAYS`` before the horizon for older
    customers); a pre-horizon customer must be alive at the horizon start (redrawn until so,
    a bounded number of times), so the opening population holds some who are already
    disengaging.
    """
    seg_factor = np.array([SEGMENTS[s][3] for s in SEGMENTS])
    hazard = cfg.lapse_rate * seg_factor[segment]  # per day
    clock = np.maximum(signup, -_WARMUP_DAYS * _DAY)
    n = signup.shape[0]
    onset = np.empty(n)
    lapse = np.empty(n)
    todo = np.arange(n)
    for _ in range(50):
        k = todo.shape[0]
        with np.errstate(divide="ignore"):
            wait = np.where(hazard[todo] > 0, rng.exponential(1.0, k) / hazard[todo], np.inf)
        abrupt = rng.random(k) < cfg.abrupt_lapse_share
        phase = _phase_length(cfg, rng.exponential(1.0, k), tau[todo] / _DAY)
        onset[todo] = clock[todo] + wait * _DAY
        lapse[todo] = onset[todo] + np.where(abrupt, 0.0, phase) * _DAY
        todo = todo[(signup[todo] < 0) & (lapse[todo] <= 0)]
        if todo.shape[0] == 0:
            break
    return onset, lapse


def _dips(
    cfg: SynthConfig, rng: np.random.Generator, active_from: np.ndarray, active_len: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Temporary engagement dips: (user, start, end, factor) sorted by (user, start), and the
    key span (``user * span + time`` orders by user, then time)."""
    n_dips = rng.poisson(cfg.dips_per_year / 365.0 * active_len / _DAY)
    user, _ = _segment_ranges(n_dips)
    start = active_from[user] + rng.random(user.shape[0]) * active_len[user]
    end = start + rng.gamma(2.0, cfg.dip_mean_days / 2.0, user.shape[0]) * _DAY
    factor = np.asarray(rng.uniform(0.15, 0.6, user.shape[0]))
    span = float(cfg.days * _DAY + 1.0)
    order = np.argsort(user * span + start, kind="stable")
    return user[order], start[order], end[order], factor[order], span


def _decline(user: np.ndarray, t: np.ndarray, onset: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """The disengagement part of g(t): 1 before the onset, ``exp(-(t - onset) / tau)`` after."""
    elapsed = np.maximum(t - onset[user], 0.0)
    return np.asarray(np.exp(-elapsed / tau[user]))


def _dip_factor(
    user: np.ndarray,
    t: np.ndarray,
    dips: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float],
) -> np.ndarray:
    """The dip part of g(t): the factor of the dip that began last before ``t`` if it still
    runs, else 1."""
    d_user, d_start, d_end, d_factor, span = dips
    if d_user.shape[0] == 0:
        return np.ones(t.shape[0])
    idx = np.searchsorted(d_user * span + d_start, user * span + t, side="right") - 1
    safe = np.maximum(idx, 0)
    inside = (idx >= 0) & (d_user[safe] == user) & (t < d_end[safe])
    return np.asarray(np.where(inside, d_factor[safe], 1.0))


def _browse_visits(
    cfg: SynthConfig,
    rng: np.random.Generator,
    visit_rate: np.ndarray,
    active_from: np.ndarray,
    active_to: np.ndarray,
    onset: np.ndarray,
    tau: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Browse visit times: a renewal process with gamma gaps (shape ``visit_regularity``
    around each customer's own value; 1 would be Poisson) in *operational time*
    ``s = int visit_rate x decline(t) dt``, mapped back to clock time. A healthy customer
    keeps a personal rhythm; a disengaging one's rhythm slows down, so gaps stretch.

    With ``a`` = active_from, ``b`` = max(onset, a) and ``g_b`` the decline factor at ``b``:
    ``s(t) = r (t - a)`` up to ``b``, then ``r (b - a) + r g_b tau (1 - exp(-(t - b) / tau))``.
    """
    r = visit_rate / _DAY
    b = np.clip(onset, active_from, active_to)
    g_b = np.exp(-np.maximum(active_from - onset, 0.0) / tau)
    s_b = r * (b - active_from)
    s_end = s_b + r * g_b * tau * -np.expm1(-(active_to - b) / tau)
    shape = np.maximum(cfg.visit_regularity * np.exp(rng.normal(0.0, 0.4, r.shape[0])), 1.0)
    # renewal points s_1 < s_2 < ... < s_end per customer, drawn in batches (a customer whose
    # batch falls short of s_end draws another one from where it stopped)
    users, points = [], []
    todo = np.flatnonzero(s_end > 0)
    reached = np.zeros(r.shape[0])
    first = True
    while todo.shape[0] > 0:
        need = s_end[todo] - reached[todo]
        n = np.ceil(need + 4.0 * np.sqrt(need) + 4.0).astype(np.int64)
        u, _ = _segment_ranges(n)
        gap = rng.gamma(shape[todo][u], 1.0 / shape[todo][u])
        if first:  # the first visit after a random stretch of a gap (a stationary start)
            heads = np.cumsum(n) - n
            gap[heads] *= rng.random(heads.shape[0])
        csum = np.cumsum(gap)
        pos = reached[todo][u] + csum - (csum - gap)[np.cumsum(n) - n][u]
        user = todo[u]
        keep = pos < s_end[user]
        users.append(user[keep])
        points.append(pos[keep])
        reached[todo] = pos[np.cumsum(n) - 1]
        todo = todo[reached[todo] < s_end[todo]]
        first = False
    user = np.concatenate(users) if users else np.empty(0, np.int64)
    s = np.concatenate(points) if points else np.empty(0)
    # back to clock time
    linear = s <= s_b[user]
    x = np.where(linear, 0.0, (s - s_b[user]) / np.maximum(r[user] * g_b[user] * tau[user], 1e-300))
    after = b[user] - tau[user] * np.log1p(-np.minimum(x, 1.0 - 1e-12))
    start = np.where(linear, active_from[user] + s / np.maximum(r[user], 1e-300), after)
    return user, start


def generate(cfg: SynthConfig) -> SynthResult:
    """Generate the storefront log described in the module docstring (deterministic by seed)."""
    rng = np.random.default_rng(cfg.seed)
    cat = _catalogue(cfg, rng)
    horizon = cfg.days * _DAY
    n_users = cfg.users

    # --- customers ---------------------------------------------------------------------------
    seg_names = list(SEGMENTS)
    seg_share = np.array([SEGMENTS[s][0] for s in seg_names])
    seg_visit, seg_buy = (np.array([SEGMENTS[s][k] for s in seg_names]) for k in (1, 2))
    segment = rng.choice(len(seg_names), size=n_users, p=seg_share / seg_share.sum())
    is_new = rng.random(n_users) < cfg.new_customer_share
    signup = np.where(
        is_new,
        rng.uniform(0.0, 0.9 * horizon, n_users),
        -rng.uniform(1.0, 365.0, n_users) * _DAY,
    )
    active_from = np.maximum(signup, 0.0)
    tau = cfg.decline_tau_days * _DAY * np.exp(rng.normal(0.0, 0.3, n_users))
    onset, lapse = _engagement_clock(cfg, rng, segment, signup, tau)
    active_to = np.minimum(lapse, horizon)
    active_len = np.maximum(active_to - active_from, 0.0)
    visit_rate = cfg.visits_per_week / 7.0 * seg_visit[segment] * rng.gamma(2.0, 0.5, n_users)
    propensity = seg_buy[segment] * np.exp(rng.normal(-0.125, 0.5, n_users))
    favourite = _draw_category(rng, cat, n_users)
    has_staple = rng.random(n_users) < cfg.replenish_share * np.minimum(seg_buy[segment], 1.0)
    staple = _draw_in_category(rng, cat, favourite)
    cycle = cfg.replenish_cycle_days * _DAY * np.exp(rng.normal(0.0, 0.25, n_users))
    phase = rng.random(n_users)
    dips = _dips(cfg, rng, active_from, active_len)

    # --- sessions: browse (a personal rhythm), replenish (cyclic), anonymous -------------------
    b_user, b_start = _browse_visits(cfg, rng, visit_rate, active_from, active_to, onset, tau)

    n_rep = np.where(
        has_staple, np.floor(np.maximum(active_len / cycle - phase, -1.0)) + 1, 0
    ).astype(np.int64)
    r_user, r_rank = _segment_ranges(n_rep)
    r_cycle = cycle[r_user]
    r_start = active_from[r_user] + (phase[r_user] + r_rank) * r_cycle
    r_start = r_start + rng.normal(0.0, 0.08, r_user.shape[0]) * r_cycle

    u_user = np.concatenate([b_user, r_user])
    u_start = np.concatenate([b_start, r_start])
    u_replenish = np.concatenate([np.zeros(b_user.shape[0], bool), np.ones(r_user.shape[0], bool)])
    u_decline = _decline(u_user, u_start, onset, tau)
    u_dip = _dip_factor(u_user, u_start, dips)
    u_eng = u_decline * u_dip
    # a dip skips visits; disengagement already slowed the browse rhythm down and skips
    # replenishment visits (purchases space out)
    u_keep = rng.random(u_user.shape[0]) < np.where(u_replenish, u_eng, u_dip)

    n_registered = int(u_keep.sum())
    n_anon = round(n_registered * cfg.anonymous_share / (1.0 - cfg.anonymous_share))
    a_start = rng.random(n_anon) * horizon

    s_user = np.concatenate([u_user[u_keep], np.full(n_anon, -1)])
    s_start = np.concatenate([u_start[u_keep], a_start])
    s_replenish = np.concatenate([u_replenish[u_keep], np.zeros(n_anon, bool)])
    s_eng = np.concatenate([u_eng[u_keep], np.ones(n_anon)])
    n_sessions = s_user.shape[0]
    registered = s_user >= 0
    s_user_safe = np.where(registered, s_user, 0)

    # --- views: a Markov walk per session, vectorized across sessions by position --------------
    mean_views = cfg.mean_session_views * (0.4 + 0.6 * s_eng)  # shorter when disengaging
    length = np.asarray(rng.geometric(np.minimum(1.0 / mean_views, 1.0)))
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
    v_eng = s_eng[v_session]
    v_prop = np.where(v_user >= 0, propensity[np.maximum(v_user, 0)], 0.5)
    p_cart = np.clip(cfg.p_cart * v_prop * np.sqrt(v_eng), 0.0, 0.9)
    is_staple_view = s_replenish[v_session] & (elapsed == 0.0)
    p_cart = np.where(is_staple_view, 0.95, p_cart)
    carted = rng.random(n_views) < p_cart
    c_idx = np.flatnonzero(carted)
    c_session = v_session[c_idx]
    c_time = v_time[c_idx] + dwell[c_idx] * rng.uniform(0.2, 0.8, c_idx.shape[0])
    c_qty = rng.geometric(0.8, c_idx.shape[0])
    p_buy = np.where(is_staple_view[c_idx], 0.9, cfg.p_purchase) * (0.5 + 0.5 * v_eng[c_idx])
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
        onset=onset,
        tau=tau,
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


def lapse_probability(
    customers: pl.DataFrame, at: datetime, horizon_days: float, cfg: SynthConfig
) -> np.ndarray:
    """The true probability that each customer lapses in ``(at, at + horizon_days]``, given
    the latent state at ``at`` (what an oracle that sees engagement could say; no model can do
    better on average). NaN for customers not yet signed up or already lapsed at ``at``.

    ``customers`` is :attr:`SynthResult.customers` of a log generated with ``cfg``. A customer
    disengaging at ``at`` (``decline_start <= at``, ``d`` days in) lapses in the horizon with
    ``1 - exp(-(L(d + H) - L(d)))``, ``L`` the cumulative lapse hazard of the phase; a healthy
    one needs an onset in the horizon (daily hazard ``lapse_rate`` x segment factor) followed
    by a lapse before its end (at once for an abrupt lapse).
    """
    at_us = int(at.astimezone(UTC).timestamp() * 1_000_000)

    def offset_days(col: str) -> np.ndarray:
        values = customers.get_column(col).cast(pl.Int64).to_numpy().astype(np.float64)
        return np.asarray((values - at_us) / (_DAY * 1e6))  # NaN where null

    tau = customers.get_column("decline_tau_days").to_numpy().astype(np.float64)
    signup = offset_days("signup_time")
    lapse = offset_days("lapse_time")
    onset = offset_days("decline_start")
    factor = customers.get_column("segment").replace_strict(
        {k: v[3] for k, v in SEGMENTS.items()}, return_dtype=pl.Float64
    )
    hazard = cfg.lapse_rate * factor.to_numpy()
    h = float(horizon_days)
    # disengaging at `at`
    d = -np.where(onset <= 0, onset, 0.0)
    declining = 1.0 - np.exp(
        -(_cumulative_hazard(cfg, d + h, tau) - _cumulative_hazard(cfg, d, tau))
    )
    alive = (signup <= 0) & ~(lapse <= 0)  # signed up by `at`, not lapsed (NaN: never)
    prob = np.where(alive, declining, np.nan)
    # healthy at `at`: onset after u days (density hazard * exp(-hazard u)), then a lapse
    # within h - u days; midpoint rule over the horizon, in blocks of customers (memory)
    steps = 400
    u = (np.arange(steps) + 0.5) * h / steps
    rest = h - u[None, :]
    todo = np.flatnonzero(alive & ~(onset <= 0))
    for block in np.array_split(todo, max(1, todo.shape[0] // 20_000)):
        p_lapse = cfg.abrupt_lapse_share + (1.0 - cfg.abrupt_lapse_share) * -np.expm1(
            -_cumulative_hazard(cfg, rest, tau[block, None])
        )
        density = hazard[block, None] * np.exp(-hazard[block, None] * u[None, :])
        prob[block] = (density * p_lapse).sum(axis=1) * h / steps
    return np.asarray(prob)


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
    onset: np.ndarray,
    tau: np.ndarray,
    visit_rate: np.ndarray,
    purchase_rate: np.ndarray,
    favourite: np.ndarray,
    staple: np.ndarray,
    cycle: np.ndarray,
    events: pl.DataFrame,
) -> pl.DataFrame:
    """Ground truth per registered customer, plus what the log shows of them.

    ``lapse_time`` (null: still a customer at the horizon end) and ``decline_start`` (the
    disengagement onset; null when after the horizon end; equal to ``lapse_time`` for an
    abrupt lapse) are latent truth, never visible in the log; ``visit_rate`` and
    ``purchase_rate`` are the healthy (engagement 1) rates per day.
    """
    start_us = int(cfg.start.timestamp() * 1_000_000)
    lapsed = lapse < cfg.days * _DAY
    lapse_us = start_us + np.round(np.where(lapsed, lapse, 0.0) * 1e6).astype(np.int64)
    onset_seen = onset < cfg.days * _DAY
    onset_us = start_us + np.round(np.where(onset_seen, onset, 0.0) * 1e6).astype(np.int64)
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
                pl.Series("decline_start", onset_us).cast(schema.UTC_TIMESTAMP),
                pl.Series("_declined", onset_seen),
                pl.Series("decline_tau_days", tau / _DAY),
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
            .alias("lapse_time"),
            pl.when(pl.col("_declined"))
            .then(pl.col("decline_start"))
            .otherwise(None)
            .alias("decline_start"),
        )
        .drop("_lapsed", "_declined")
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
