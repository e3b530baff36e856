"""What SLURM says about the worker jobs of cluster/slurm_extract.py, and the decisions taken on it.

- :func:`preflight` submits the worker job script with ``sbatch --test-only`` before anything starts: a
  request the cluster cannot satisfy (an unknown gres, partition or account, a walltime over the limit)
  becomes one clear error instead of dask-jobqueue retrying a failing ``sbatch`` forever.
- :class:`WorkerJobs` keeps the run's jobs: it follows every job the run submitted (``squeue`` for current
  and recently ended jobs, ``sacct`` where accounting is on), and while the extraction has work it submits
  a replacement for every job that ended (walltime, workers retired at their lifetime, preemption, node
  failure), so the wanted number of jobs is always queued or running. It does not trust dask's adaptive
  scaling for this: adapt compares its target with the jobs the cluster *plans*, and a job that ended on
  its own stays planned (distributed drops a lost job only when a worker's name equals the job's, which
  is never true for jobs of several worker processes, dask-jobqueue#611), so adapt sees nothing missing
  and submits nothing. A job cancelled by someone else (``scancel``) or that failed (its script or worker
  exited with an error: a replacement would fail the same way) is not replaced: the wanted number drops
  by one, and once no job is left the run stops at once, describing them in one line, e.g. ``SLURM jobs:
  14 RUNNING; 12, 13 TIMEOUT (TimeLimit)``, as the "waiting for workers" lines and the no-worker error do.
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
# Ended jobs that are not replaced, and why: a replacement would be cancelled again or fail the same way.
NOT_REPLACED = {"CANCELLED": "was cancelled outside this run",
                "FAILED": "failed (see its output in --log-directory)",
                "BOOT_FAIL": "failed to boot its node"}
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
    """The SLURM jobs of one dask-jobqueue cluster, kept at ``wanted`` queued or running jobs while the
    extraction has work: :meth:`status` is the extraction's ``cluster_status``, called every few seconds
    until the last video is written, so replacing jobs stops with the work.

    Create it first, build the cluster with ``job_cls=worker_jobs.job_class()``, then :meth:`start` it.
    """

    def __init__(self, wanted: int,
                 say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> None:
        self.cluster: Any = None
        self.wanted = wanted
        self.say = say
        # Written by the cluster's event loop (job_class) and read here: iterate over copies.
        self.jobs: dict[str, JobState] = {}  # every job this run submitted, in submission order
        self.job_of: dict[str, str] = {}  # the cluster's name of a job -> its latest SLURM job id
        self.cancelled_here: set[str] = set()  # jobs the cluster itself cancelled
        self._not_replaced: set[str] = set()

    def job_class(self) -> type:
        """dask-jobqueue's SLURMJob, noting every job it submits and every job the cluster cancels (an ended
        job dropped, a job whose worker was lost for ``distributed.deploy.lost-worker-timeout``, shutdown)
        while SLURM had not cancelled it yet: a job SLURM says was CANCELLED that the cluster never
        cancelled was cancelled by someone else."""
        from dask_jobqueue.slurm import SLURMJob
        from distributed.core import Status

        jobs = self

        class TrackedSLURMJob(SLURMJob):
            async def start(self) -> None:
                await super().start()
                jobs.jobs.setdefault(str(self.job_id), JobState("SUBMITTED"))
                jobs.job_of[self.name] = str(self.job_id)

            async def close(self) -> None:
                if self.job_id and not await self.cancelled_already():
                    jobs.cancelled_here.add(str(self.job_id))
                await super().close()
                # dask-jobqueue's close leaves the status "running", which distributed's cluster shutdown
                # asserts against when a job object is still referenced (e.g. from an error's traceback).
                self.status = Status.closed

            async def cancelled_already(self) -> bool:
                """Whether SLURM says someone cancelled the job before this close (asked without blocking the
                event loop the scheduler runs on)."""
                try:
                    answer = await self._call(["squeue", "--noheader", "--states=all", f"--jobs={self.job_id}",
                                               "--format=%T"])
                except (RuntimeError, OSError):
                    return False  # squeue failed: the cancel about to be sent is this run's
                return answer.split() == ["CANCELLED"]

        return TrackedSLURMJob

    def start(self, cluster: Any) -> None:
        """Submit the wanted jobs of ``cluster`` (built with :meth:`job_class`)."""
        self.cluster = cluster
        cluster.scale(jobs=self.wanted)

    def status(self) -> str:
        """Refresh what SLURM says about the jobs, replace the ones that ended (except cancelled or failed
        ones: the wanted number drops instead), describe them in one line. Raises NoWorkersError once no
        job is left and none will replace them."""
        self._refresh()
        for job_id, state in list(self.jobs.items()):
            if job_id in self._not_replaced or job_id in self.cancelled_here:
                continue
            if state.state in NOT_REPLACED:
                self._not_replaced.add(job_id)
                self.wanted = max(0, self.wanted - 1)
                self.say(f"SLURM job {job_id} {NOT_REPLACED[state.state]}: not replaced "
                         f"(at most {self.wanted} worker job(s) from now on)")
        if self.wanted == 0 and all(state.state in FINAL_STATES for state in list(self.jobs.values())):
            raise NoWorkersError(f"every worker job was cancelled or failed and none will replace them "
                                 f"({self.describe()}). Finished videos are saved: run the same command again "
                                 "to continue.")
        self._replace_ended()
        return self.describe()

    def _replace_ended(self) -> None:
        """Swap the jobs SLURM says ended for new ones in the cluster's plan, until ``wanted`` are planned."""
        ended = [name for name, job_id in list(self.job_of.items())
                 if name in self.cluster.worker_spec and self.jobs[job_id].state in FINAL_STATES]
        if ended:
            self.cluster.sync(self._replace, ended)

    async def _replace(self, ended: list[str]) -> None:
        """In one step of the cluster's event loop (no scaling runs between), so that the new jobs get new
        names: distributed closes a job whose worker left some seconds ago by its *name*, and would close a
        replacement that took the old name instead."""
        spec = self.cluster.worker_spec
        for _ in range(self.wanted - (len(spec) - len(ended))):
            spec.update(self.cluster.new_worker_spec())  # named while the ended jobs still hold their names
        for name in ended:
            del spec[name]
        await self.cluster  # close the ended jobs' objects, submit the new ones

    def describe(self) -> str:
        if not self.jobs:
            return "no SLURM worker job submitted yet"
        groups: dict[str, list[str]] = {}
        for job_id, state in list(self.jobs.items()):
            groups.setdefault(str(state), []).append(job_id)
        parts = []
        for state, ids in groups.items():
            shown = ", ".join(ids) if len(ids) <= 5 else f"{len(ids)} jobs (latest {', '.join(ids[-3:])})"
            parts.append(f"{shown} {state}")
        return "SLURM jobs: " + "; ".join(parts)

    def _refresh(self) -> None:
        open_ids = [job_id for job_id, state in list(self.jobs.items()) if state.state not in FINAL_STATES]
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
