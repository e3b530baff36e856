"""Dask worker preload of cluster/slurm_extract.py: a worker retires before its job's walltime, at a time
counted from the job's start, and finishes the videos it is encoding first.

dask's own ``--lifetime`` counts from the worker's start, after the job's prologue, Python's imports and
the connection to the scheduler, so a slow start pushes a retirement meant for just before the walltime
past it (the job then ends TIMEOUT, its worker never retired); and its retirement hands the videos the
worker is still encoding to other workers, which encode them again. Instead the job script exports, at
the job's start, when its workers retire (``LAMFLOW_RETIRE_AT``, seconds since the epoch) and how far
each one's moment is drawn around it (``LAMFLOW_RETIRE_STAGGER``, seconds). At that moment the worker
pauses as dask pauses a worker over its memory limit (it starts no new video; the scheduler sends new
ones elsewhere), waits until the videos it is encoding are done and their results fetched, and retires
gracefully: the videos queued on it move to other workers. A video still running at the walltime is
encoded again elsewhere, as on any lost worker.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import time

from distributed import Worker
from distributed.core import Status

logger = logging.getLogger("distributed.worker")  # the worker's own log, which its job's output shows
DRAIN_POLL = 1.0  # seconds between looks at what a retiring worker still holds
_pending: dict[int, asyncio.Task] = {}  # id(worker) -> its retirement, while it has not begun


async def retire(worker: Worker, at: float) -> None:
    """At ``at`` (epoch seconds): stop starting videos, finish the running ones, retire gracefully."""
    await asyncio.sleep(max(0.0, at - time.time()))
    _pending.pop(id(worker), None)  # from here on, closing the worker must not cancel its own retirement
    if worker.status not in (Status.running, Status.paused):
        return  # already closing: the run ended or the scheduler went away
    worker.memory_manager.memory_pause_fraction = False  # the memory monitor resumes paused workers otherwise
    worker.status = Status.paused
    logger.info("lamflow: retiring before the job's walltime once its %d running video(s) are done",
                len(worker.state.all_running_tasks))
    while worker.status == Status.paused and (worker.state.all_running_tasks or worker.data):
        await asyncio.sleep(DRAIN_POLL)
    await worker.close_gracefully(reason="lamflow: retiring before the job's walltime")


async def dask_setup(worker: Worker) -> None:
    stagger = float(os.environ.get("LAMFLOW_RETIRE_STAGGER", "0"))
    at = float(os.environ["LAMFLOW_RETIRE_AT"]) + random.uniform(-stagger, stagger)
    _pending[id(worker)] = asyncio.create_task(retire(worker, at))


async def dask_teardown(worker: Worker) -> None:
    task = _pending.pop(id(worker), None)
    if task is not None:  # the worker closes before its time (the run ended): nothing to retire
        task.cancel()
