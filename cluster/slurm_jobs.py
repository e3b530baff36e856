"""What SLURM says about the worker jobs of cluster/slurm_extract.py, and the decisions taken on it.

- :func:`preflight` submits the worker job script with ``sbatch --test-only`` before anything starts: a
  request the cluster cannot satisfy (an unknown gres, partition or account, a walltime over the limit)
  becomes one clear error instead of dask-jobqueue retrying a failing ``sbatch`` forever.
- :class:`WorkerJobs` follows every job the run submitted (``squeue`` for current and recently ended jobs,
  ``sacct`` where accounting is on) and describes them in one line, e.g. ``SLURM jobs: 14 RUNNING;
  12, 13 TIMEOUT (TimeLimit)``: the "waiting for workers" lines and the no-worker error quote it.
  Jobs that end by walltime, preemption or a node failure are replaced by adaptive scaling; a job
  cancelled by someone else (``scancel``) is not: the run's maximum drops by one, and once every job is
  cancelled the run stops at once with that line (finished videos kept) instead of resubmitting.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Callable

from lamflow.errors import LamflowError
from lamflow.pipelines.watchdog import NoWorkersError

# Job states after which a job never runs again (squeue/sacct names).
FINAL_STATES = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "ENDED", "FAILED", "NODE_FAIL",
                          "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "TIMEOUT"})
_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
QUERY_TIMEOUT = 60  # seconds for one squeue/sacct/sbatch call: a slurmctld that slow is a problem to report


class SlurmRequestError(LamflowError, RuntimeError):
    """SLURM refuses the worker job, or its commands are not available here."""


def parse_walltime(text: str) -> int:
    """Seconds of a SLURM time limit: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``."""
    match = _WALLTIME.match(text.strip())
    if not match:
        raise SlurmRequestError(f"--walltime {text!r} is not a SLURM time (MM, MM:SS, HH:MM:SS or D-HH:MM:SS)")
    days, first, second, third = match.groups()
    numbers = [int(n) for n in (first, second, third) if n is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = (numbers + [0, 0])[:3]
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if len(numbers) == 3:
        hours, minutes, seconds = numbers
        return (hours * 60 + minutes) * 60 + seconds
    minutes, seconds = (numbers + [0])[:2]
    return minutes * 60 + seconds


def _run(command: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=QUERY_TIMEOUT)
    except FileNotFoundError:
        raise SlurmRequestError(f"{command[0]} not found: run this on a machine with the SLURM client commands "
                                "(a login node)") from None
    except subprocess.TimeoutExpired:
        raise SlurmRequestError(f"{command[0]} did not answer within {QUERY_TIMEOUT} s: is slurmctld reachable?") from None


def preflight(job_script: str) -> str:
    """``sbatch --test-only`` the worker job; returns SLURM's estimate ("Job N to start at ... on nodes ...")
    or raises :class:`SlurmRequestError` with SLURM's own words."""
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="lamflow-worker-") as script:
        script.write(job_script)
        script.flush()
        done = _run(["sbatch", "--test-only", script.name])
    said = " ".join(line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip())
    if done.returncode:
        raise SlurmRequestError(f"SLURM refuses the worker job ({said or f'sbatch exit status {done.returncode}'}); "
                                "check --queue, --account, --gpus, --cores, --memory and --walltime against the "
                                "cluster (sinfo, scontrol show partition)")
    return said


@dataclass
class JobState:
    state: str
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.state} ({self.reason})" if self.reason and self.reason != "None" else self.state


class WorkerJobs:
    """The SLURM jobs of one dask-jobqueue cluster; :meth:`status` is the extraction's ``cluster_status``.

    Create it first, build the cluster with ``job_cls=worker_jobs.job_class()``, then set ``cluster``.
    """

    def __init__(self, minimum: int, maximum: int,
                 say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> None:
        self.cluster: Any = None
        self.minimum, self.maximum = minimum, maximum
        self.say = say
        self.jobs: dict[str, JobState] = {}  # every job this run submitted, in submission order
        self.cancelled_here: set[str] = set()  # jobs the cluster itself ended (scale-down, shutdown)
        self._not_replaced: set[str] = set()

    def job_class(self) -> type:
        """dask-jobqueue's SLURMJob, noting every job the cluster cancels because it no longer wants it
        (adaptive scale-down, shutdown). A job that ended otherwise is still wanted when the cluster
        cleans it up; if SLURM says it was CANCELLED, someone else cancelled it."""
        from dask_jobqueue.slurm import SLURMJob
        from distributed.core import Status

        jobs = self

        class TrackedSLURMJob(SLURMJob):
            async def close(self) -> None:
                if self.job_id and (jobs.cluster is None or self.name not in jobs.cluster.worker_spec):
                    jobs.cancelled_here.add(str(self.job_id))
                await super().close()
                # dask-jobqueue's close leaves the status "running", which distributed's cluster shutdown
                # asserts against when a job object is still referenced (e.g. from an error's traceback).
                self.status = Status.closed

        return TrackedSLURMJob

    def scale(self) -> None:
        """(Re)start adaptive scaling between the current minimum and maximum number of jobs."""
        self.cluster.adapt(minimum_jobs=min(self.minimum, self.maximum), maximum_jobs=self.maximum)

    def status(self) -> str:
        """Refresh what SLURM says about the jobs, apply the no-replacement rule, describe them in one line.
        Raises NoWorkersError once every job was cancelled and none may replace them."""
        for job_id in [job.job_id for job in list(self.cluster.workers.values()) if job.job_id]:
            self.jobs.setdefault(str(job_id), JobState("SUBMITTED"))
        self._refresh()
        for job_id, state in self.jobs.items():
            if state.state == "CANCELLED" and job_id not in self.cancelled_here and job_id not in self._not_replaced:
                self._not_replaced.add(job_id)
                self.maximum = max(0, self.maximum - 1)
                self.scale()
                self.say(f"SLURM job {job_id} was cancelled outside this run: not replaced "
                         f"(at most {self.maximum} worker job(s) from now on)")
        if self.maximum == 0 and all(state.state in FINAL_STATES for state in self.jobs.values()):
            raise NoWorkersError(f"every worker job was cancelled and none will replace them ({self.describe()}). "
                                 "Finished videos are saved: run the same command again to continue.")
        return self.describe()

    def describe(self) -> str:
        if not self.jobs:
            return "no SLURM worker job submitted yet"
        groups: dict[str, list[str]] = {}
        for job_id, state in self.jobs.items():
            groups.setdefault(str(state), []).append(job_id)
        parts = []
        for state, ids in groups.items():
            shown = ", ".join(ids) if len(ids) <= 5 else f"{len(ids)} jobs (latest {', '.join(ids[-3:])})"
            parts.append(f"{shown} {state}")
        return "SLURM jobs: " + "; ".join(parts)

    def _refresh(self) -> None:
        open_ids = [job_id for job_id, state in self.jobs.items() if state.state not in FINAL_STATES]
        listed: set[str] = set()
        # squeue knows running jobs and, for MinJobAge seconds, ended ones; sacct (accounting) knows the rest.
        for command in (["squeue", "--noheader", "--states=all", "--format=%i|%T|%r"],
                        ["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,State,Reason"]):
            unknown = [job_id for job_id in open_ids if job_id not in listed]
            if not unknown:
                break
            try:
                answer = _run([*command, f"--jobs={','.join(unknown)}"]).stdout
            except SlurmRequestError:
                return  # a slow or restarting slurmctld: keep the last known states, ask again next time
            for line in answer.splitlines():
                fields = line.strip().split("|")
                if len(fields) == 3 and fields[0] in self.jobs:
                    self.jobs[fields[0]] = JobState(fields[1].split()[0], fields[2])  # sacct: "CANCELLED by 0"
                    listed.add(fields[0])
        for job_id in open_ids:
            if job_id not in listed and self.jobs[job_id].state != "SUBMITTED":
                # Seen before, listed by nobody now: it ended longer ago than squeue remembers, without accounting.
                self.jobs[job_id] = JobState("ENDED", "no longer known to squeue; no accounting")
