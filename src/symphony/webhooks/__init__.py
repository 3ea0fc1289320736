"""Webhooks: endpoints a participant registers, signed deliveries of its payment events.

`WebhookStore` reaches the database's webhook functions; `signing` is the Standard Webhooks
signature; `secretbox` seals signing secrets at rest; `urlsafety` decides which URLs may be
called; `sender` makes one bounded, pinned call; `schedule` is the retry backoff. The delivery
service that ties them together is `symphony.services.delivery`.
"""

from __future__ import annotations

from symphony.webhooks.config import WebhookSettings
from symphony.webhooks.schedule import RetrySchedule
from symphony.webhooks.secretbox import (
    SecretBox,
    SecretUnavailableError,
    configured_secret_box,
    load_secret_box,
)
from symphony.webhooks.sender import SenderLimits, SendResult, WebhookSender
from symphony.webhooks.store import (
    EVENT_TYPES,
    ClaimedDelivery,
    Completed,
    CreatedEndpoint,
    DeliveryOutcome,
    Endpoint,
    FanOut,
    RotatedSecret,
    WebhookStore,
)
from symphony.webhooks.urlsafety import Target, UrlPolicy, UrlRefused, check_url

__all__ = [
    "EVENT_TYPES",
    "ClaimedDelivery",
    "Completed",
    "CreatedEndpoint",
    "DeliveryOutcome",
    "Endpoint",
    "FanOut",
    "RetrySchedule",
    "RotatedSecret",
    "SecretBox",
    "SecretUnavailableError",
    "SendResult",
    "SenderLimits",
    "Target",
    "UrlPolicy",
    "UrlRefused",
    "WebhookSender",
    "WebhookSettings",
    "WebhookStore",
    "check_url",
    "configured_secret_box",
    "load_secret_box",
]
