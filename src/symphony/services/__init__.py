"""Long-running services built on the outbox, one package each: the HTTP API (`api`), the
executor worker with its zombie repair loop (`worker`), the rail simulator (`rail_sim`) and the
whole system in one process (`system`, what `symphony run` starts)."""

from __future__ import annotations
