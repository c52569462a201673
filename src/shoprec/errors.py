"""Errors a user can fix. The CLI prints them as one readable message and exits with code 2."""

from __future__ import annotations


class ShoprecError(Exception):
    """Base of every user-fixable error (bad config, bad input file, missing dataset...)."""


class DataError(ShoprecError, ValueError):
    """Input data that cannot be read; the message names file, line, column and value."""
