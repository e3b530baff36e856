"""Never wait silently for Dask workers that are not coming.

A client of an external cluster (SLURM jobs, a scheduler someone else runs) can lose every worker: jobs
hit their walltime, are cancelled, or never start. :class:`WorkerWatchdog` is polled by the client loop:
while no worker is connected it says so every ``report_every`` seconds, and after ``timeout`` seconds it
raises :class:`NoWorkersError` with what the cluster manager knows (e.g. SLURM's job states), so the run
stops with one clear line instead of hanging. Output written so far stays resumable.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable

from lamflow.errors import ConfigError, LamflowError

DEFAULT_WORKER_TIMEOUT = 600.0  # seconds without any worker before a run stops
CHECK_EVERY = 5.0  # seconds between looks at the scheduler (and at the cluster manager's status)
REPORT_EVERY = 60.0  # seconds between "still waiting" lines while no worker is connected


class NoWorkersError(LamflowError, RuntimeError):
    """No Dask worker has been connected for longer than the configured timeout."""


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class WorkerWatchdog:
    """Tracks how long the cluster behind ``client`` has had no worker.

    ``timeout``: seconds without any worker before :meth:`check` raises (None = wait forever, still
    reporting). ``cluster_status``: called on every check (so a cluster manager can react to what it
    sees, see cluster/slurm_extract.py); returns one line about the workers' jobs for the messages.
    """

    def __init__(
        self,
        client: Any,
        timeout: float | None,
        cluster_status: Callable[[], str] | None = None,
        report_every: float = REPORT_EVERY,
        say: Callable[[str], None] = _say,
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"--worker-timeout must be > 0 seconds (or None to wait forever), got {timeout}")
        self.client = client
        self.timeout = timeout
        self.cluster_status = cluster_status
        self.report_every = report_every
        self.say = say
        now = time.monotonic()
        self._last_worker = now  # the start counts as "seen": jobs need time to start
        self._last_check = self._last_report = now

    def due(self) -> bool:
        return time.monotonic() - self._last_check >= CHECK_EVERY

    def check(self) -> int:
        """Look at the scheduler now; returns the connected workers' threads. Raises NoWorkersError once
        there has been no worker for ``timeout`` seconds."""
        now = self._last_check = time.monotonic()
        threads = sum(self.client.nthreads().values())
        status = self.cluster_status() if self.cluster_status else ""
        if threads:
            self._last_worker = self._last_report = now
            return threads
        waited = now - self._last_worker
        detail = f"; {status}" if status else ""
        if self.timeout is not None and waited >= self.timeout:
            raise NoWorkersError(
                f"no Dask worker connected to {self.client.scheduler.address} for {waited:.0f} s (worker timeout "
                f"{self.timeout:g} s){detail}. Finished videos are saved: run the same command again to continue."
            )
        if now - self._last_report >= self.report_every:
            self._last_report = now
            self.say(f"waiting for Dask workers: none connected for {waited:.0f} s{detail}")
        return 0
