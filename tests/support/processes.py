"""Real service processes for fault tests: `symphony worker` as a subprocess, its log kept."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def service_env(admin_dsn: str, home: Path, threshold: int, **extra: str) -> dict[str, str]:
    """The environment of a service process on a test database (production mode)."""
    return {
        **os.environ, "DATABASE_URL": admin_dsn, "SYMPHONY_HOME": str(home),
        "SYMPHONY_ENV": "production", "ZOMBIE_THRESHOLD_SECONDS": str(threshold),
        "SYMPHONY_LOG_LEVEL": "WARNING", "SYMPHONY_LOG_FORMAT": "json",
        "SYMPHONY_POLL_INTERVAL_SECONDS": "0.2", "PYTHONPATH": str(REPO), **extra,
    }


class ServiceProcess:
    """A `symphony` command as a subprocess, its stderr collected line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, env: dict[str, str], *args: str) -> ServiceProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "symphony", *args, env=env, cwd=str(REPO),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        return cls(process)

    @classmethod
    async def worker(cls, env: dict[str, str], rail_url: str, worker_id: str,
                     *extra: str) -> ServiceProcess:
        return await cls.start(env, "worker", "--rail-url", rail_url, "--worker-id", worker_id,
                               "--batch-size", "20", "--concurrency", "20", *extra)

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.lines.append(line.decode(errors="replace"))

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def signal(self, sig: signal.Signals) -> None:
        if self.alive:
            self.process.send_signal(sig)

    async def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not stop within 30 s; the exit code."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
            code = await self.process.wait()
        await asyncio.gather(self._reader, return_exceptions=True)
        return code


async def until(condition: Callable[[], Awaitable[bool]], what: str, limit: float = 60) -> None:
    """Poll `condition` until it holds, failing after `limit` seconds."""
    deadline = time.monotonic() + limit
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def stop_all(processes: Sequence[ServiceProcess | None]) -> None:
    for p in processes:
        if p is not None:
            await p.stop()
