"""The webhook delivery service: signed, retried, recorded calls of participants' events.

`DeliveryService` is the loop (one cycle = fan out, claim, call, record); `DeliveryProcess`
runs it with its sender and metrics, which is what `symphony delivery` starts and what
`symphony run` embeds. It logs in as `symphony_delivery_svc` and works as
`symphony_delivery`, which may only run the delivery functions.
"""

from __future__ import annotations

from symphony.services.delivery.config import DeliveryConfig
from symphony.services.delivery.metric import DeliveryMetrics
from symphony.services.delivery.runner import DeliveryProcess
from symphony.services.delivery.service import DeliveryCycle, DeliveryService, event_body

__all__ = [
    "DeliveryConfig",
    "DeliveryCycle",
    "DeliveryMetrics",
    "DeliveryProcess",
    "DeliveryService",
    "event_body",
]
