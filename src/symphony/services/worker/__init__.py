"""The executor worker: claims due outbox items, dispatches them to the rail, records outcomes.

`ExecutorWorker` is one loop (one cycle = claim a batch, dispatch, complete in one statement);
`WorkerProcess` runs it together with the zombie repair loop, the heartbeat, the metrics
endpoint and (where its database handle can become the control role) the scheduled ledger
checkpoints, which is what `symphony worker` starts.
"""

from __future__ import annotations

from symphony.services.worker.config import DEFAULT_RAIL_URL, WorkerConfig, default_worker_id
from symphony.services.worker.executor import CycleResult, ExecutorWorker, payload_problem
from symphony.services.worker.metric import WorkerMetrics
from symphony.services.worker.runner import OnceResult, WorkerProcess, stop_on_signals

__all__ = [
    "DEFAULT_RAIL_URL",
    "CycleResult",
    "ExecutorWorker",
    "OnceResult",
    "WorkerConfig",
    "WorkerMetrics",
    "WorkerProcess",
    "default_worker_id",
    "payload_problem",
    "stop_on_signals",
]
