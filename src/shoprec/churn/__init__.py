"""Churn prediction: who is about to lapse, how sure we are, and why.

* :mod:`shoprec.churn.config` - :class:`ChurnConfig` (definition, windows, models, segments)
* :mod:`shoprec.churn.labels` - cohort and labels at a cut-off, no look-ahead
* :mod:`shoprec.churn.features` - Polars RFM+ features and stacked examples
* :mod:`shoprec.churn.baselines` - logistic RFM, gradient-boosted trees, BG/NBD
* :mod:`shoprec.churn.calibration` - Platt / isotonic, stored as JSON
* :mod:`shoprec.churn.metrics` - ROC-AUC, PR-AUC, log loss, Brier, ECE, lift, plots
* :mod:`shoprec.churn.train` - :func:`fit_churn` (Lightning network + baselines -> bundle)
* :mod:`shoprec.churn.score` - :func:`score_customers`, :func:`write_scores`
* :mod:`shoprec.churn.hybrid` - BG/NBD quantities (fitted per cut-off) as network inputs
* :mod:`shoprec.churn.run` - :func:`fit_churn_run` (config -> data -> tracked run folder),
  :func:`is_churn_config` (what ``shoprec train`` dispatches on)
* :mod:`shoprec.churn.cli` - :func:`register_cli` (``shoprec churn score|train``)

Heavy modules (torch, Lightning, sklearn) load on first use of the names that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoprec.churn.config import ChurnConfig

if TYPE_CHECKING:
    from shoprec.churn.cli import register_cli
    from shoprec.churn.config import is_churn_config, is_churn_config_file
    from shoprec.churn.run import fit_churn_run
    from shoprec.churn.score import ChurnBundle, score_customers, write_scores
    from shoprec.churn.train import ChurnResult, fit_churn

__all__ = [
    "ChurnBundle",
    "ChurnConfig",
    "ChurnResult",
    "fit_churn",
    "fit_churn_run",
    "is_churn_config",
    "is_churn_config_file",
    "register_cli",
    "score_customers",
    "write_scores",
]

_LAZY = {
    "ChurnBundle": "shoprec.churn.score",
    "score_customers": "shoprec.churn.score",
    "write_scores": "shoprec.churn.score",
    "ChurnResult": "shoprec.churn.train",
    "fit_churn": "shoprec.churn.train",
    "fit_churn_run": "shoprec.churn.run",
    "is_churn_config": "shoprec.churn.config",
    "is_churn_config_file": "shoprec.churn.config",
    "register_cli": "shoprec.churn.cli",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'shoprec.churn' has no attribute {name!r}")
