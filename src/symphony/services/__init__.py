"""Long-running services built on the outbox, one package each: the HTTP API with the
operator dashboard and `/metrics` (`api`), the executor worker with its zombie repair loop and
heartbeat (`worker`), the webhook delivery service (`delivery`), the scheduled ledger
checkpoints (`checkpoint`), the rail simulator (`rail_sim`) and the whole system in one process
(`system`, what `symphony run` starts). Each has the shape of `symphony.service`."""

from __future__ import annotations
