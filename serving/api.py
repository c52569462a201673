"""Request and response bodies of the storefront endpoints (they also make ``/docs.json``).

Only what can be checked without configuration is checked here (types, required fields,
string shapes); configured limits (k range, batch and session sizes) are checked by the
service so that they follow ``config.yaml`` and answer with a message naming the limit.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

MAX_ID_LENGTH = 256


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _plain_text(value: str) -> str:
    """Ids become sqlite and Redis keys and log fields: valid UTF-8 (no lone surrogates) and no
    control characters. A compiled regex, not a per-character loop: this runs for every id of
    every event."""
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 text") from None
    return value


Id = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH),
    AfterValidator(_plain_text),
]


class Body(BaseModel):
    """Every request body: unknown fields are an error (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


# --- events ---
EventType = Literal["view", "cart", "purchase"]  # schema.CORE_EVENT_TYPES (a test checks)


class EventIn(Body):
    """One storefront event. Without ``event_id`` a retry is recognised by its content."""

    event_id: Id | None = None
    user_id: Id | None = Field(default=None, description="signed-in customer; omit for anonymous")
    session_id: Id
    item_id: Id
    event_type: EventType
    timestamp: datetime | None = Field(
        None, description="ISO-8601 or epoch seconds; naive means UTC; default: time of receipt"
    )
    category: Id | None = None
    price: float | None = Field(default=None, ge=0, le=1e12, allow_inf_nan=False)
    quantity: int | None = Field(default=None, ge=1, le=1_000_000)


class EventsRequest(Body):
    events: list[EventIn] = Field(min_length=1, description="one or more events, oldest first")


class EventsResponse(BaseModel):
    accepted: int = Field(description="events stored now")
    duplicates: int = Field(description="events already stored before (same event id/content)")


# --- recently viewed ---
class RecentlyViewedRequest(Body):
    """Give exactly one of ``user_id`` (signed in) or ``session_id`` (anonymous)."""

    user_id: Id | None = None
    session_id: Id | None = None
    limit: int = 10
    exclude_purchased: bool = True
    max_age_days: float | None = Field(default=None, ge=0, le=3650, allow_inf_nan=False)


class ViewedItem(BaseModel):
    item_id: str
    viewed_at: datetime


class RecentlyViewedResponse(BaseModel):
    items: list[ViewedItem]


# --- recommendations ---
class NextItemsRequest(Body):
    """Give the session as ``items`` (oldest first) or as a ``session_id`` the service has
    events for; a session id without events is a new visitor and gets popular items."""

    items: list[Id] | None = None
    session_id: Id | None = None
    user_id: Id | None = Field(default=None, description="excludes this customer's purchases")
    k: int = 10
    exclude_viewed: bool = Field(default=True, description="leave out items of the session")
    exclude_purchased: bool = Field(default=True, description="leave out items the shopper bought")


class CartAddonsRequest(Body):
    cart_items: list[Id]
    k: int = 10
    user_id: Id | None = None
    session_id: Id | None = None
    exclude_purchased: bool = True


class RecommendedItem(BaseModel):
    item_id: str
    score: float = Field(description="orders items within this list only")
    reason: str = Field(
        description="why it is shown: 'because you viewed X', 'viewed in this session' (an "
        "item the shopper already viewed), 'popular now' or a generic label"
    )
    fallback: bool = Field(description="from popularity, not from the shopper's items")


class RecommendationsResponse(BaseModel):
    items: list[RecommendedItem]
    fallback: bool = Field(description="no item of the request was known: popular items only")
    unknown_items: list[str] = Field(description="request items the model does not know")


# --- churn ---
class ChurnRiskRequest(Body):
    user_id: Id
    at: datetime | None = Field(default=None, description="score as of this time; default: now")


class Driver(BaseModel):
    feature: str
    contribution: float | None = Field(description="log-odds; positive pushes towards churn")


class ChurnRiskResponse(BaseModel):
    user_id: str
    probability: float
    segment: str
    drivers: list[Driver]
    at: datetime
