"""Symphony Outbox: a PostgreSQL-authoritative transactional payment outbox."""

from __future__ import annotations

__version__ = "0.1.0"
