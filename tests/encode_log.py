"""Dask worker preload for the SLURM tests: one line "<SLURM job id> <task key>" per finished video task,
appended to $LAMFLOW_TEST_ENCODE_LOG, so a test can count how often each video was encoded, across every
worker job of a run (a worker's own counters die with its job)."""
import os

from distributed.diagnostics.plugin import WorkerPlugin


class EncodeLog(WorkerPlugin):
    def __init__(self, path: str, job: str) -> None:
        self.path, self.job = path, job

    def transition(self, key, start, finish, **kwargs):
        if finish == "memory" and str(key).startswith("lamflow-extract-"):
            with open(self.path, "a") as log:  # one short O_APPEND write per line: workers never interleave
                log.write(f"{self.job} {key}\n")


async def dask_setup(worker):
    await worker.plugin_add(EncodeLog(os.environ["LAMFLOW_TEST_ENCODE_LOG"], os.environ.get("SLURM_JOB_ID", "?")),
                            name="lamflow-encode-log")
