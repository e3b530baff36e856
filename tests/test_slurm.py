"""cluster/ on a real single-node SLURM (Debian slurm-wlm + munge, started and stopped by the fixture):
extraction whose jobs end at their walltime or retire before it and are replaced until the run finishes,
a scancel, a gres the cluster lacks, a partitioned extraction as a job array, and training under sbatch
that survives a requeue. Real daemons,
real dask-jobqueue jobs, real torchrun; nothing is mocked. No result depends on this machine's speed: the
waits are long enough for a loaded machine and end early when their condition holds."""
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds
from contract_shards import write_toy_qvhighlights
from lamflow.pipelines.plan import Partition
from lamflow.pipelines.shards import complete_samples
from lamflow.train.run_log import read_metrics
from media import make_media
from slurm_localhost import LocalSlurm

from lamflow.contract import MANIFEST, output_dirs, partition_dir_name, safe_key
from lamflow.fileio import read_jsonl

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
VIDEOS = 8
KEYS = sorted(safe_key(f"v{i:02d}.mp4") for i in range(VIDEOS))  # the videos' sample keys
HANG = 600  # seconds: only a hung run waits this long, however loaded the machine

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a local SLURM runs its daemons as root")


@pytest.fixture(scope="module")
def slurm():
    cluster = LocalSlurm()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for i in range(VIDEOS):
        make_media(root / f"v{i:02d}.mp4", duration=6.0, size="96x72", rate=8)
    return root


def start_extraction(slurm: LocalSlurm, videos: Path, out: Path, *options: str,
                     pause_after: int | None = None) -> subprocess.Popen:
    """cluster/slurm_extract.py with 1-core jobs named after the test's folder; every finished video task is
    logged by tests/encode_log.py. ``pause_after``: the run's first worker pauses after that many videos
    (tests/pause_worker.py), so the first job cannot finish the run, however fast this machine is."""
    preloads = [str(TESTS / "encode_log.py")]
    env = {**slurm.env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "LAMFLOW_TEST_ENCODE_LOG": str(encode_log(out))}
    if pause_after:
        preloads.append(str(TESTS / "pause_worker.py"))
        env |= {"LAMFLOW_TEST_PAUSE_AFTER": str(pause_after), "LAMFLOW_TEST_PAUSE_MARK": str(out.parent / "paused")}
    env["DASK_DISTRIBUTED__WORKER__PRELOAD"] = json.dumps(preloads)
    command = [sys.executable, str(REPO / "cluster" / "slurm_extract.py"), "--cores", "1", "--memory", "2GB",
               "--job-name", job_name(out), "--log-directory", str(out.parent / "jobs"), *options, "--",
               str(videos), "--out", str(out), "--clip-model", "lamflow-tiny", "--fps", "2", "--no-progress"]
    stderr = open(out.parent / "client.err", "w")
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=out.parent)


def job_name(out: Path) -> str:
    return f"extract-{out.parent.name}"


def encode_log(out: Path) -> Path:
    return out.parent / "encodes.log"


def run_jobs(slurm: LocalSlurm, out: Path) -> list[dict[str, str]]:
    """The worker jobs of the runs writing ``out``, oldest first, as SLURM tells them."""
    return [slurm.job(j["id"]) | {"id": j["id"]} for j in slurm.jobs() if j["name"] == job_name(out)]


def finish(run: subprocess.Popen, out: Path) -> None:
    assert run.wait(timeout=HANG) == 0, (out.parent / "client.err").read_text()


def wait_for_written(out: Path, count: int, run: subprocess.Popen) -> int:
    temp = out / "shards" / ".shard-000000.tar.tmp"
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline and run.poll() is None:
        written = len(complete_samples(temp)[0]) if temp.exists() else 0
        if written >= count:
            return written
        time.sleep(0.05)
    raise AssertionError(f"the run wrote fewer than {count} samples: {(out.parent / 'client.err').read_text()}")


def encodes_by_job(out: Path) -> dict[str, list[str]]:
    """SLURM job id -> video keys its worker finished encoding, in order."""
    jobs: dict[str, list[str]] = {}
    for line in encode_log(out).read_text().splitlines():
        job, task = line.split()
        jobs.setdefault(job, []).append(re.match(r"lamflow-extract-(.+)-[0-9a-f]{8}$", task).group(1))
    return jobs


def shard_keys(out: Path) -> list[str]:
    keys = [s["__key__"] for s in wds.WebDataset(sorted(map(str, (out / "shards").glob("*.tar"))), shardshuffle=False)]
    assert len(keys) == len(set(keys)), "a sample is in the shards twice"
    return sorted(keys)


def assert_finished_and_encoded_once_but_in_flight(out: Path, in_flight: int) -> dict[str, list[str]]:
    """Every video is in the shards and recorded ok; each was encoded once, except at most ``in_flight``
    videos a job was encoding when it ended. Returns the encodes by job."""
    assert shard_keys(out) == KEYS
    manifest = read_jsonl(out / MANIFEST)
    assert sorted(r["key"] for r in manifest) == shard_keys(out) and {r["status"] for r in manifest} == {"ok"}
    by_job = encodes_by_job(out)
    encoded = Counter(key for keys in by_job.values() for key in keys)
    assert set(encoded) == set(shard_keys(out))
    assert sum(count - 1 for count in encoded.values()) <= in_flight, encoded
    return by_job


def test_with_the_default_flags_a_job_whose_worker_retires_before_its_walltime_is_replaced_until_the_run_finishes(
        slurm, videos, tmp_path):
    out = tmp_path / "out"
    started = time.monotonic()
    # The default --lifetime auto: the worker retires 45 +- 7 s after its job's start, before the 1-minute walltime.
    run = start_extraction(slurm, videos, out, "--walltime", "1", "--jobs", "1", pause_after=3)
    finish(run, out)
    finished = time.monotonic()

    jobs = run_jobs(slurm, out)
    assert len(jobs) >= 2  # replacements took over; nobody resubmitted anything
    first_log = (out.parent / "jobs" / f"{job_name(out)}-{jobs[0]['id']}.err").read_text()
    assert "lamflow: retiring before the job's walltime" in first_log
    # Its job completed once the worker's process exited, unless this machine was too loaded to exit in time.
    assert jobs[0]["JobState"] in ("COMPLETED", "TIMEOUT"), jobs[0]
    by_job = assert_finished_and_encoded_once_but_in_flight(out, in_flight=0)  # retiring, it finished its videos
    print(f"default flags: first job {jobs[0]['JobState']} after {jobs[0]['RunTime']}; {len(jobs)} jobs; finished "
          f"at {finished - started:.0f} s; encodes per job {({job: len(keys) for job, keys in by_job.items()})}")


def test_a_walltime_cut_is_taken_over_by_a_replacement_job_and_no_finished_video_is_encoded_twice(
        slurm, videos, tmp_path):
    out = tmp_path / "out"
    started = time.monotonic()
    # --lifetime none: the paused first worker stays until its 1-minute walltime ends its job.
    run = start_extraction(slurm, videos, out, "--walltime", "1", "--lifetime", "none", "--jobs", "1", pause_after=3)
    finish(run, out)
    finished = time.monotonic()

    jobs = run_jobs(slurm, out)
    assert (jobs[0]["JobState"], jobs[0]["Reason"]) == ("TIMEOUT", "TimeLimit")
    assert len(jobs) >= 2  # a replacement job took over; nobody resubmitted anything
    by_job = assert_finished_and_encoded_once_but_in_flight(out, in_flight=1)  # at most the video it was encoding
    print(f"walltime cut: first job {jobs[0]['JobState']} after {jobs[0]['RunTime']}; {len(jobs)} jobs; finished at "
          f"{finished - started:.0f} s; encodes per job {({job: len(keys) for job, keys in by_job.items()})}")


def test_a_cancelled_job_stops_the_client_with_slurms_word_and_the_same_command_finishes(slurm, videos, tmp_path):
    out = tmp_path / "out"
    started = time.monotonic()
    run = start_extraction(slurm, videos, out, "--jobs", "1", pause_after=2)
    wait_for_written(out, 2, run)
    (job,) = [j["id"] for j in run_jobs(slurm, out)]
    slurm.run("scancel", job)
    assert run.wait(timeout=HANG) == 2
    stopped = time.monotonic()
    err = (out.parent / "client.err").read_text()
    assert [line for line in err.splitlines() if "error" in line.lower()] == [
        f"lamflow slurm-extract: error: every worker job was cancelled or failed and none will replace them "
        f"(SLURM jobs: {job} CANCELLED). Finished videos are saved: run the same command again to continue."]
    assert "Traceback" not in err
    kept = shard_keys(out)  # the interrupted run committed what it had written
    assert 2 <= len(kept) < VIDEOS

    rerun = start_extraction(slurm, videos, out, "--jobs", "1")
    finish(rerun, out)
    assert shard_keys(out) == KEYS
    rerun_encodes = [key for j, keys in encodes_by_job(out).items() if j != job for key in keys]
    assert sorted(rerun_encodes) == sorted(set(shard_keys(out)) - set(kept))  # only what the first run had not kept
    print(f"scancel: client exited {stopped - started:.0f} s after start with {len(kept)} samples kept; "
          f"the rerun encoded {len(rerun_encodes)} videos")


def test_a_gres_the_cluster_lacks_is_one_clear_error_before_any_job(slurm, videos, tmp_path):
    out = tmp_path / "out"
    before = {j["id"] for j in slurm.jobs()}
    run = start_extraction(slurm, videos, out, "--gpus", "--jobs", "1")
    assert run.wait(timeout=HANG) == 2
    err = (out.parent / "client.err").read_text()
    assert err.strip().splitlines() == ["lamflow slurm-extract: error: SLURM refuses the worker job (sbatch: error: "
                                        "Invalid generic resource (gres) specification); check --queue, --account, "
                                        "--gpus, --cores, --memory and --walltime against the cluster (sinfo, "
                                        "scontrol show partition)"]
    assert not {j["id"] for j in slurm.jobs()} - before  # no job was submitted (earlier ones may change state)


def wait_for(condition, what: str, timeout: float = HANG) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def sbatch_array(slurm: LocalSlurm, tasks: str, count: int, videos: Path, out: Path) -> str:
    """cluster/extract_array.sbatch for array tasks ``tasks`` of ``count`` partitions, one core each; returns the
    array's job id once every task has ended, each COMPLETED."""
    job = slurm.run("sbatch", "--parsable", f"--array={tasks}", "--cpus-per-task=1", "--time=10",
                    f"--chdir={out.parent}", f"--output={out.parent}/array-%A_%a.out", "--export=ALL,HF_HUB_OFFLINE=1",
                    str(REPO / "cluster" / "extract_array.sbatch"), str(count), str(videos), "--out", str(out),
                    "--clip-model", "lamflow-tiny", "--fps", "2", "--no-progress").stdout.strip()

    def states() -> list[str]:
        answer = slurm.run("squeue", "--noheader", "--states=all", f"--jobs={job}", "--format=%T").stdout
        return answer.split()

    wait_for(lambda: states() and all(state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") for state in states()),
             f"array job {job}")
    assert set(states()) == {"COMPLETED"}, [path.read_text() for path in out.parent.glob(f"array-{job}_*.out")]
    return job


def unfinished_partitions(out: Path, count: int) -> str:
    done = subprocess.run([sys.executable, str(REPO / "cluster" / "unfinished_partitions.py"), str(out), str(count)],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_an_array_task_extracts_its_partition_and_resubmitting_the_unfinished_ones_completes_the_tree(
        slurm, videos, tmp_path):
    out = tmp_path / "out"
    first = sbatch_array(slurm, "0", 2, videos, out)  # task 1 never ran, as if it had been preempted or failed
    assert "partition 0/2, --workers 1" in (tmp_path / f"array-{first}_0.out").read_text()  # its allocation's core
    assert unfinished_partitions(out, 2) == "1"

    sbatch_array(slurm, unfinished_partitions(out, 2), 2, videos, out)
    assert unfinished_partitions(out, 2) == ""
    parts = output_dirs(out)
    assert [part.name for part in parts] == [partition_dir_name(k, 2) for k in range(2)]
    keys = [shard_keys(part) for part in parts]
    assert sorted(keys[0] + keys[1]) == KEYS  # every video in one partition, none in both
    assert all(Partition(k, 2).holds(key) for k in range(2) for key in keys[k])


def sbatch_training(slurm: LocalSlurm, toy, run_dir: Path, rdzv_port: int) -> str:
    """cluster/train_sbatch.sh under sbatch: 100 steps of a tiny model on the toy shards, CPU only."""
    overrides = [f"data.train_shards={toy.shards}", f"data.train_annotations={toy.train_annotations}",
                 "data.val_shards=", "model.encoder.dim=16", "model.encoder.depth=1", "model.encoder.heads=2",
                 "model.encoder.generator_hidden=16",
                 "model.encoder.generator_rank=2", "data.loader.num_workers=0", "data.loader.batch_size=2", "optim.warmup_steps=1",
                 "optim.max_steps=100", "run.log_every=1", "run.checkpoint_every=0", "run.eval_every=0",
                 "run.progress=false", "run.threads=1", f"run.out_dir={run_dir}"]
    # The script's own #SBATCH lines, except what this 1-node test cluster needs smaller.
    done = slurm.run("sbatch", "--parsable", "--cpus-per-task=1", "--time=5", "--signal=B:USR1@10",
                     f"--chdir={run_dir.parent}", f"--output={run_dir.parent}/train-%j.out",
                     f"--export=ALL,RDZV_PORT={rdzv_port}",
                     str(REPO / "cluster" / "train_sbatch.sh"), str(REPO / "train" / "configs" / "qvhighlights_lam.yaml"),
                     *overrides)
    return done.stdout.strip()


def test_train_sbatch_trains_on_cpu_and_every_requeued_attempt_continues_from_its_checkpoint(slurm, tmp_path):
    toy = write_toy_qvhighlights(tmp_path / "toy", videos=6, val_videos=0, duration=12.0)
    run_dir = tmp_path / "run"
    job = sbatch_training(slurm, toy, run_dir, rdzv_port=29500 + os.getpid() % 1000)
    metrics = run_dir / "metrics.jsonl"
    interruptions = [
        # what --signal=B:USR1@N sends N seconds before the walltime: the script stops the trainer and requeues
        ["scancel", "--batch", "--signal=USR1", job],
        ["scontrol", "requeue", job],  # an operator's requeue (as preemption): SIGTERM to the steps, back to the queue
    ]
    def logged() -> int:
        return len(metrics.read_text().splitlines()) if metrics.exists() else 0

    before = 0
    for attempt, interruption in enumerate(interruptions, start=1):
        wait_for(lambda: logged() >= before + 5, f"attempt {attempt} to train 5 steps")
        slurm.run(*interruption)
        # A requeued job waits two minutes before it may start again; an administrator's StartTime=now skips that,
        # once the node has cleaned up after the previous attempt.
        wait_for(lambda: slurm.job(job)["JobState"] == "PENDING" and slurm.job_cleaned_up(job),
                 f"the job to be requeued after attempt {attempt}")
        before = logged()
        slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    wait_for(lambda: slurm.job(job)["JobState"] in ("COMPLETED", "FAILED", "CANCELLED"), "the job to finish")

    log = (tmp_path / f"train-{job}.out").read_text()
    assert slurm.job(job)["JobState"] == "COMPLETED", log
    assert "training on CPU with 1 process(es)" in log and "attempt 3" in log
    assert f"walltime close: checkpoint saved, requeueing job {job}" in log
    stops = [int(step) for step in re.findall(r"stopped by SIGTERM at step (\d+)", log)]
    assert len(stops) == 2 and 5 <= stops[0] < stops[1] < 100
    for step in stops:
        assert f"resumed from {run_dir}/checkpoints/step-{step:08d}.pt at step {step}" in log
    steps = [r["step"] for r in read_metrics(metrics) if r["split"] == "train"]
    assert steps == list(range(1, 101))  # one curve: no step lost, none repeated
