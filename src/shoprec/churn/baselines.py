"""Churn baselines: logistic regression on RFM, gradient-boosted trees, and BG/NBD.

* :class:`LogisticRFM`: L2 logistic regression on ``log1p`` recency, frequency and monetary
  value (the classic RFM scorecard as a probability model).
* :class:`GradientBoostedTrees`: sklearn ``HistGradientBoostingClassifier`` (Ke et al. 2017
  style histogram GBDT) on every model feature.
* :class:`BGNBD`: the beta-geometric / negative binomial distribution model of Fader, Hardie &
  Lee (2005), "Counting your customers the easy way: an alternative to the Pareto/NBD model",
  Marketing Science 24(2). Fitted by maximum likelihood (their eq. 6) with
  ``scipy.optimize.minimize`` on log-parameters. :meth:`BGNBD.p_alive` is their eq. (13);
  :meth:`BGNBD.p_no_purchase` is the probability of zero transactions in ``(T, T + h]``;
  :meth:`BGNBD.expected_purchases` is their eq. (10), the expected number of transactions in
  ``(T, T + h]``.

sklearn models are baselines only: their metrics are reported, they are never bundled
(bundles hold tensors and JSON, never pickles).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from scipy.optimize import minimize
from scipy.special import betaln, expit, gammaln, hyp2f1, logsumexp
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from threadpoolctl import threadpool_limits

from shoprec.churn.config import GBTConfig
from shoprec.churn.features import RFM_FEATURES

__all__ = [
    "BGNBD",
    "BGNBDChurn",
    "GradientBoostedTrees",
    "LogisticRFM",
    "bgnbd_inputs",
    "bgnbd_log_likelihood",
]

FloatArray = np.ndarray


def _matrix(frame: pl.DataFrame, columns: Sequence[str]) -> FloatArray:
    return frame.select(columns).to_numpy().astype(np.float64)


class LogisticRFM:
    """Logistic regression on ``log1p(recency_days, frequency, monetary_mean)``."""

    name = "logistic_rfm"

    def __init__(self, seed: int = 0, c: float = 1.0) -> None:
        self.columns = list(RFM_FEATURES)
        self.pipeline: Pipeline = make_pipeline(
            FunctionTransformer(np.log1p),
            StandardScaler(),
            LogisticRegression(C=c, max_iter=1000, random_state=seed),
        )

    def fit(self, frame: pl.DataFrame, y: FloatArray) -> LogisticRFM:
        self.pipeline.fit(_matrix(frame, self.columns), np.asarray(y, dtype=np.int64))
        return self

    def predict_proba(self, frame: pl.DataFrame) -> FloatArray:
        p: FloatArray = self.pipeline.predict_proba(_matrix(frame, self.columns))[:, 1]
        return p


class GradientBoostedTrees:
    """``HistGradientBoostingClassifier`` on the model features, early-stopped internally."""

    name = "gbt"

    def __init__(
        self,
        columns: Sequence[str],
        config: GBTConfig | None = None,
        seed: int = 0,
        threads: int | None = 1,
    ) -> None:
        cfg = config or GBTConfig()
        self.columns = list(columns)
        self.threads = threads  # OpenMP threads (small data: 1 avoids oversubscription)
        self.model = HistGradientBoostingClassifier(
            max_iter=cfg.max_iter,
            learning_rate=cfg.learning_rate,
            max_leaf_nodes=cfg.max_leaf_nodes,
            min_samples_leaf=cfg.min_samples_leaf,
            l2_regularization=cfg.l2_regularization,
            early_stopping=True,
            validation_fraction=0.15,
            n_iter_no_change=20,
            random_state=seed,
        )

    def fit(self, frame: pl.DataFrame, y: FloatArray) -> GradientBoostedTrees:
        with threadpool_limits(limits=self.threads):
            self.model.fit(_matrix(frame, self.columns), np.asarray(y, dtype=np.int64))
        return self

    def predict_proba(self, frame: pl.DataFrame) -> FloatArray:
        with threadpool_limits(limits=self.threads):
            p: FloatArray = self.model.predict_proba(_matrix(frame, self.columns))[:, 1]
        return p


def bgnbd_log_likelihood(
    r: float, alpha: float, a: float, b: float, x: FloatArray, t_x: FloatArray, big_t: FloatArray
) -> FloatArray:
    """Per-customer log-likelihood of BG/NBD (Fader, Hardie & Lee 2005, eq. 6).

    ``L = B(a, b+x)/B(a, b) * G(r+x) a^r / (G(r) (alpha+T)^(r+x))
    + [x > 0] B(a+1, b+x-1)/B(a, b) * G(r+x) alpha^r / (G(r) (alpha+t_x)^(r+x))``

    with ``x`` repeat transactions, ``t_x`` the time of the last one and ``T`` the length of
    the observation period, both measured from the first transaction.
    """
    x = np.asarray(x, dtype=np.float64)
    t_x = np.asarray(t_x, dtype=np.float64)
    big_t = np.asarray(big_t, dtype=np.float64)
    common = gammaln(r + x) - gammaln(r) + r * np.log(alpha) - betaln(a, b)
    term1 = betaln(a, b + x) - (r + x) * np.log(alpha + big_t)
    repeat = x > 0
    term2 = np.where(
        repeat,
        betaln(a + 1.0, np.where(repeat, b + x - 1.0, b)) - (r + x) * np.log(alpha + t_x),
        -np.inf,
    )
    ll: FloatArray = common + logsumexp(np.stack([term1, term2]), axis=0)
    return ll


@dataclass
class BGNBD:
    """BG/NBD fitted by maximum likelihood; time in the caller's unit (e.g. weeks)."""

    penalizer: float = 0.0  # L2 penalty on the parameters (0 = plain MLE, as in the paper)
    params: dict[str, float] = field(default_factory=dict)
    converged: bool = False
    neg_log_likelihood: float = float("nan")

    def fit(self, x: FloatArray, t_x: FloatArray, big_t: FloatArray) -> BGNBD:
        """Maximise the summed eq.-6 log-likelihood over ``log(r, alpha, a, b)`` (L-BFGS-B)."""
        x = np.asarray(x, dtype=np.float64)
        t_x = np.asarray(t_x, dtype=np.float64)
        big_t = np.asarray(big_t, dtype=np.float64)
        if x.size == 0:
            raise ValueError("BG/NBD needs at least one customer")
        _check_summary(x, t_x, big_t)
        scale = max(float(np.mean(big_t)), 1e-6)

        def objective(theta: FloatArray) -> float:
            r, alpha, a, b = np.exp(theta)
            ll = bgnbd_log_likelihood(r, alpha * scale, a, b, x, t_x, big_t)
            penalty = self.penalizer * float(np.sum(np.exp(theta) ** 2))
            value = -float(np.sum(ll)) / x.size + penalty
            return value if np.isfinite(value) else 1e12

        best = None
        for start in (np.zeros(4), np.array([0.0, 0.0, -1.0, 1.0])):
            res = minimize(objective, start, method="L-BFGS-B", bounds=[(-12.0, 12.0)] * 4)
            if best is None or res.fun < best.fun:
                best = res
        assert best is not None
        r, alpha, a, b = np.exp(best.x)
        self.params = {"r": float(r), "alpha": float(alpha * scale), "a": float(a), "b": float(b)}
        self.converged = bool(best.success)
        self.neg_log_likelihood = float(best.fun) * x.size
        return self

    def _p(self) -> tuple[float, float, float, float]:
        if not self.params:
            raise RuntimeError("BG/NBD is not fitted")
        p = self.params
        return p["r"], p["alpha"], p["a"], p["b"]

    def log_likelihood(self, x: FloatArray, t_x: FloatArray, big_t: FloatArray) -> FloatArray:
        return bgnbd_log_likelihood(*self._p(), x, t_x, big_t)

    def p_alive(self, x: FloatArray, t_x: FloatArray, big_t: FloatArray) -> FloatArray:
        """P(alive at T | x, t_x, T) (FHL 2005 eq. 13); exactly 1 when ``x = 0``.

        ``1 / (1 + [x > 0] * a / (b + x - 1) * ((alpha + T) / (alpha + t_x))^(r + x))``:
        in BG/NBD a customer can only drop out right after a repeat purchase, so one with no
        repeat purchase is certainly alive (the known quirk that MBG/NBD removes).
        """
        r, alpha, a, b = self._p()
        x = np.asarray(x, dtype=np.float64)
        t_x = np.asarray(t_x, dtype=np.float64)
        big_t = np.asarray(big_t, dtype=np.float64)
        repeat = x > 0
        log_ratio = (
            np.log(a)
            - np.log(np.where(repeat, b + x - 1.0, 1.0))
            + (r + x) * (np.log(alpha + big_t) - np.log(alpha + t_x))
        )
        p: FloatArray = np.where(repeat, expit(-log_ratio), 1.0)
        return p

    def p_no_purchase(
        self, x: FloatArray, t_x: FloatArray, big_t: FloatArray, horizon: float
    ) -> FloatArray:
        """P(no transaction in (T, T + horizon] | x, t_x, T).

        Dead customers never buy; an alive one has posterior rate ``lambda ~ Gamma(r + x,
        alpha + T)`` and (since BG/NBD drop-out happens only right after a purchase) makes no
        purchase with probability ``E[exp(-lambda h)] = ((alpha+T)/(alpha+T+h))^(r+x)``.
        """
        r, alpha, _, _ = self._p()
        x = np.asarray(x, dtype=np.float64)
        big_t = np.asarray(big_t, dtype=np.float64)
        alive = self.p_alive(x, t_x, big_t)
        stay_quiet = np.exp((r + x) * (np.log(alpha + big_t) - np.log(alpha + big_t + horizon)))
        p: FloatArray = 1.0 - alive + alive * stay_quiet
        return p

    def expected_purchases(
        self, x: FloatArray, t_x: FloatArray, big_t: FloatArray, horizon: float
    ) -> FloatArray:
        """E[transactions in (T, T + horizon] | x, t_x, T] (FHL 2005 eq. 10).

        ``(a+b+x-1)/(a-1) * [1 - ((alpha+T)/(alpha+T+h))^(r+x) * 2F1(r+x, b+x; a+b+x-1;
        h/(alpha+T+h))] / (1 + [x > 0] a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x))``.
        Where the Gaussian hypergeometric series is not finite (``a`` close to 1, extreme
        parameters) the value falls back to ``P(alive) * (r+x)/(alpha+T) * h``, the expected
        count of an alive customer who does not drop out during the horizon (an upper bound).
        """
        r, alpha, a, b = self._p()
        x = np.asarray(x, dtype=np.float64)
        t_x = np.asarray(t_x, dtype=np.float64)
        big_t = np.asarray(big_t, dtype=np.float64)
        alive = self.p_alive(x, t_x, big_t)
        fallback = alive * (r + x) / (alpha + big_t) * horizon
        with np.errstate(all="ignore"):
            z = horizon / (alpha + big_t + horizon)
            series = hyp2f1(r + x, b + x, a + b + x - 1.0, z)
            ratio = np.exp((r + x) * (np.log(alpha + big_t) - np.log(alpha + big_t + horizon)))
            exact = (a + b + x - 1.0) / (a - 1.0) * (1.0 - ratio * series) * alive
        ok = np.isfinite(exact) & (exact >= 0.0) & (exact <= 10.0 * fallback + 1e-9)
        out: FloatArray = np.where(ok, exact, fallback)
        return out


def _check_summary(x: FloatArray, t_x: FloatArray, big_t: FloatArray) -> None:
    if np.any(x < 0) or np.any(t_x < 0) or np.any(big_t < t_x - 1e-9) or np.any(big_t <= 0):
        raise ValueError("BG/NBD needs x >= 0, 0 <= t_x <= T and T > 0")


def bgnbd_inputs(
    frame: pl.DataFrame, time_unit_days: float = 7.0
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``(x, t_x, T)`` from churn features, in units of ``time_unit_days``.

    ``x = frequency - 1`` repeat transactions, ``T`` = time since the first purchase,
    ``t_x = T - recency``. A customer with no purchase (a browser) is taken to start at
    their first event with ``x = 0`` (an approximation: BG/NBD starts at a first purchase).
    """
    freq = frame.get_column("frequency").to_numpy().astype(np.float64)
    age = frame.get_column("first_purchase_age_days").to_numpy().astype(np.float64)
    rec = frame.get_column("recency_days").to_numpy().astype(np.float64)
    tenure = frame.get_column("tenure_days").to_numpy().astype(np.float64)
    buyer = freq > 0
    x = np.where(buyer, freq - 1.0, 0.0)
    big_t = np.where(buyer, age, tenure)
    t_x = np.where(buyer, np.clip(age - rec, 0.0, None), 0.0)
    big_t = np.maximum(big_t, 1e-3)  # an event a moment before T
    t_x = np.minimum(t_x, big_t)
    return x, t_x / time_unit_days, big_t / time_unit_days


class BGNBDChurn:
    """BG/NBD as a churn scorer: P(no purchase in the horizon) (or ``1 - P(alive)``)."""

    name = "bgnbd"

    def __init__(
        self, horizon_days: float, time_unit_days: float = 7.0, score: str = "no_purchase"
    ) -> None:
        if score not in ("no_purchase", "not_alive"):
            raise ValueError("score must be 'no_purchase' or 'not_alive'")
        self.horizon_days = horizon_days
        self.time_unit_days = time_unit_days
        self.score = score
        self.model = BGNBD()

    def fit(self, frame: pl.DataFrame, y: FloatArray | None = None) -> BGNBDChurn:
        """Unsupervised: ``y`` is ignored; the likelihood uses the purchase history only."""
        self.model.fit(*bgnbd_inputs(frame, self.time_unit_days))
        return self

    def predict_proba(self, frame: pl.DataFrame) -> FloatArray:
        x, t_x, big_t = bgnbd_inputs(frame, self.time_unit_days)
        if self.score == "not_alive":
            p: FloatArray = 1.0 - self.model.p_alive(x, t_x, big_t)
            return p
        return self.model.p_no_purchase(x, t_x, big_t, self.horizon_days / self.time_unit_days)
