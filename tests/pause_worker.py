"""Dask worker preload for the SLURM and kill tests: the run's first worker pauses once it has encoded
$LAMFLOW_TEST_PAUSE_AFTER videos, as Dask pauses a worker over its memory limit: it starts no other video,
while its event loop (heartbeats, its retirement) runs on. So the first job's share of the corpus outlasts
that job on any machine, however fast, and later jobs must finish the run. Only the worker that claims the
file $LAMFLOW_TEST_PAUSE_MARK first pauses; every later worker works normally."""
import os

from distributed.core import Status
from distributed.diagnostics.plugin import WorkerPlugin


class PauseAfter(WorkerPlugin):
    def __init__(self, videos: int) -> None:
        self.left = videos

    def setup(self, worker) -> None:
        self.worker = worker

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "memory" and str(key).startswith("lamflow-extract-"):
            self.left -= 1
            if self.left == 0:  # after this transition: the worker's state machine is not re-entrant
                self.worker.loop.add_callback(self.pause)

    def pause(self) -> None:
        self.worker.memory_manager.memory_pause_fraction = False  # its memory monitor would resume it
        self.worker.status = Status.paused


async def dask_setup(worker) -> None:
    try:
        os.close(os.open(os.environ["LAMFLOW_TEST_PAUSE_MARK"], os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return
    await worker.plugin_add(PauseAfter(int(os.environ["LAMFLOW_TEST_PAUSE_AFTER"])), name="lamflow-test-pause")
