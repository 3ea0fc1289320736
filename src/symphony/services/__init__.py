"""Long-running services built on the outbox: the executor worker and the rail simulator."""

from __future__ import annotations
