"""shoprec: session-based recommendations and churn prediction for online stores."""

__version__ = "0.1.0"
