"""``bentoml serve tests.serving.fake_service:Storefront``: the real service, able to load the
test bundle (whose model lives in tests/serving/fakes.py) in the server's own process."""

from __future__ import annotations

from tests.serving.fakes import register

register()

from serving.service import Storefront  # noqa: E402  (the registry entry must exist first)

__all__ = ["Storefront"]
