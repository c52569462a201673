"""The storefront service: a thin BentoML shell over :mod:`shoprec.inference` and
:mod:`shoprec.store` (see ``service.py``)."""
