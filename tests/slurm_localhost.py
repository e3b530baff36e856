"""A real single-node SLURM on localhost for tests: munged, slurmctld and slurmd from Debian's slurm-wlm and
munge packages, started in a temporary root with free ports and stopped by their pids.

Runs as root (the daemons' users are root and munge; no systemd, no cgroups). Installs the packages with
apt-get when they are missing, as `make setup` does.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
# One node with this machine's CPUs, one partition; walltime kills after KillWait seconds of SIGTERM.
CONFIG = """\
ClusterName=lamflowtest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge-run/munge.socket
MpiDefault=none
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
KillWait=10
InactiveLimit=0
MinJobAge=300
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def ensure_installed() -> None:
    if all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "munged", "sbatch")):
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"SLURM is not installed and only root can install it: apt-get install {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES], check=True, env=env,
                   capture_output=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


class LocalSlurm:
    """Start with :meth:`start`, stop with :meth:`stop` (also after a failed start); ``env`` is the
    environment for client commands (sbatch, squeue, dask-jobqueue) talking to this cluster."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="lamflow-slurm-"))
        self.config = self.root / "slurm.conf"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}  # not an outer job's
        self.env["SLURM_CONF"] = str(self.config)
        self._daemons: list[subprocess.Popen] = []

    def start(self) -> "LocalSlurm":
        ensure_installed()
        self.root.chmod(0o755)  # munged (user munge) must reach its folders
        for name in ("state", "spool", "log"):
            (self.root / name).mkdir()
        munge_private, munge_run = self.root / "munge", self.root / "munge-run"
        munge_private.mkdir(mode=0o700)
        munge_run.mkdir(mode=0o755)
        key = munge_private / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for path in (munge_private, munge_run, key):
            shutil.chown(path, "munge", "munge")
        socket_path = munge_run / "munge.socket"
        self._spawn(["munged", "--foreground", f"--socket={socket_path}", f"--key-file={key}",
                     f"--pid-file={munge_run}/munged.pid", f"--log-file={munge_private}/munged.log",
                     f"--seed-file={munge_private}/munged.seed"], "munged", user="munge", group="munge")
        _wait_for(socket_path.exists, "munged's socket")
        self.config.write_text(CONFIG.format(root=self.root, ctld_port=_free_port(), slurmd_port=_free_port(),
                                             cpus=os.cpu_count()))
        self._spawn(["slurmctld", "-D", "-f", str(self.config)], "slurmctld")
        self._spawn(["slurmd", "-D", "-f", str(self.config), "-N", "localhost"], "slurmd")
        _wait_for(lambda: self.node_state() == "idle", "the SLURM node to be idle")
        return self

    def job_cleaned_up(self, job_id: str) -> bool:
        """True once slurmd holds nothing of the job's last run (its spool folder is gone): a requeued job
        released before that can have its new batch script deleted by the old run's cleanup."""
        return not (self.root / "spool" / f"job{int(job_id):05d}").exists()

    def node_state(self) -> str:
        """The node's state as sinfo says it: idle, mixed, allocated, completing ..."""
        return self.run("sinfo", "--noheader", "--format=%T", check=False).stdout.strip()

    def _spawn(self, command: list[str], name: str, **kwargs) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")
        # cwd: whatever a daemon leaves in its working folder (a core dump) goes with the temporary root
        self._daemons.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                              cwd=self.root, start_new_session=True, **kwargs))
        log.close()

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster (e.g. ``run("squeue")``)."""
        return subprocess.run(command, capture_output=True, text=True, env=self.env, check=check, timeout=60)

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Reason, RunTime, Restarts, ...)."""
        fields = {}
        for item in self.run("scontrol", "--oneliner", "show", "job", job_id).stdout.split():
            name, _, value = item.partition("=")
            fields[name] = value
        return fields

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still knows (running, queued and recently ended), oldest first."""
        lines = self.run("squeue", "--noheader", "--states=all", "--format=%i|%j|%T|%r").stdout.splitlines()
        rows = sorted(lines, key=lambda row: int(row.split("|")[0]))
        return [dict(zip(("id", "name", "state", "reason"), line.split("|"))) for line in rows]

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged (in that order) and delete the root."""
        try:
            if self._daemons and self._daemons[-1].poll() is None:
                self.run("scancel", "--full", f"--user={os.getuid()}", check=False)
                _wait_for(lambda: not [j for j in self.jobs() if j["state"] in ("RUNNING", "PENDING", "COMPLETING")],
                          "jobs to end", timeout=30)
        except (TimeoutError, subprocess.SubprocessError, OSError):
            pass  # stopping the daemons below ends what is left
        finally:
            for daemon in reversed(self._daemons):
                if daemon.poll() is None:
                    daemon.send_signal(signal.SIGTERM)
                    try:
                        daemon.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        daemon.kill()
                        daemon.wait()
            shutil.rmtree(self.root, ignore_errors=True)
