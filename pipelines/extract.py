"""Run an extraction: expand sources, resume from the output directory, fan videos out over Dask,
write the results into atomic shards from the client, record everything in the manifest.

The client is the only writer of the output directory (shards, manifest, stats), so workers need no
shared filesystem with it and no locking; workers only decode and encode. Tasks are submitted through a
bounded window (a few per worker thread), so neither the scheduler nor worker memory grows with corpus
size. Results are written in input order (a finished video waits in a bounded reorder buffer for the
slower ones before it, see REORDER_WINDOWS), so the same inputs give the same shards whatever order workers
finish in. Each written sample survives a killed client (see shards.py). A cluster that loses all its
workers stops the run with a clear error after ``worker_timeout`` seconds instead of leaving it waiting
(see watchdog.py).
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from lamflow import __version__
from lamflow.contract import EXTRACTION, MANIFEST, PARTITIONS_DIR, STATS, Record, join_names, output_dirs, partition_dir_name, sample_dims
from lamflow.errors import ConfigError, DataFileError
from lamflow.fileio import read_json
from lamflow.pipelines.failures import FailureTally
from lamflow.pipelines.manifest import OutputDir, SettingsMismatchError, settings_differences
from lamflow.pipelines.plan import Partition, Plan, make_plan
from lamflow.pipelines.settings import ClipSettings
from lamflow.pipelines.shards import DEFAULT_SHARD_BYTES, DEFAULT_SHARD_SAMPLES, ShardSink, UnwritableSampleError
from lamflow.pipelines.sources import MEDIA_EXTENSIONS, Source, SourceError, iter_sources
from lamflow.pipelines.texts import load_texts, texts_fingerprint
from lamflow.pipelines.watchdog import CHECK_EVERY, DEFAULT_WORKER_TIMEOUT, WorkerWatchdog
from lamflow.pipelines.worker import VideoOutcome, extract_video

# Settings that change how fast features are computed, not what they are: a resume may change them.
RUNTIME_FIELDS = ("device", "frame_batch")
TASKS_PER_THREAD = 2  # submitted-but-unfinished tasks per worker thread: keeps workers busy, memory bounded
WINDOW_WITHOUT_WORKERS = 64  # window while an external cluster has no workers yet (e.g. SLURM jobs queued)
# Finished videos held back (at most this many windows) while an earlier, slower one is still running, so
# samples reach the shards in input order: the same inputs give the same shards however workers finish.
# They are spilled to disk as they arrive (reorder.py): a kill loses only what was in flight.
REORDER_WINDOWS = 4


@dataclass
class ExtractionSummary:
    """What one run did (also stored as ``last_run`` in stats.json)."""

    out_dir: str
    inputs: int  # media inputs named by SOURCES (of this partition)
    attempted: int  # extracted in this run
    ok: int  # succeeded in this run
    failed: int  # failed in this run
    skipped_done: int  # already in a shard from an earlier run
    skipped_failed: int  # failed in an earlier run and not retried (see --retry-failed)
    partition: str | None = None  # "K/N" of a partitioned run
    shards_written: list[str] = field(default_factory=list)
    seconds: float = 0.0
    plan_seconds: float = 0.0  # opening the output and deciding what to extract, before the first task
    videos_per_second: float = 0.0
    repairs: list[str] = field(default_factory=list)  # fixes applied after a killed run
    unmatched_text_keys: list[str] = field(default_factory=list)  # --texts video names that match no input
    failures: FailureTally = field(default_factory=FailureTally)  # this run's, by reason

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "failures"} | {"failures": self.failures.to_json()}


def run_record(settings: ClipSettings, texts: str | Path | None) -> dict[str, Any]:
    """The identity of a run, stored in extraction.json and compared on resume (``runtime`` is not): a
    video run's and an image run's differ in ``kind``, so neither resumes the other."""
    values = settings.to_json()
    return {
        "kind": settings.kind,
        "settings": {k: v for k, v in values.items() if k not in RUNTIME_FIELDS},
        "texts": {"sha256": texts_fingerprint(texts)} if texts else None,
        "runtime": {k: values[k] for k in RUNTIME_FIELDS if k in values},
        "lamflow_version": __version__,
    }


@contextlib.contextmanager
def dask_client(workers: int, scheduler: str | None) -> Iterator[Any]:
    """A Dask client: on the cluster at ``scheduler``, or on an embedded LocalCluster of ``workers``
    single-threaded processes (processes, so decoding and torch never contend for one GIL)."""
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    with LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",  # a free port: never collide with another cluster on 8787
        silence_logs=logging.ERROR,
    ) as cluster, Client(cluster) as client:
        yield client


def _record_of(outcome: VideoOutcome, name: str) -> Record:
    if outcome.sample is None:
        return Record(outcome.key, outcome.source, "error", error=outcome.error,
                      original_name=name, seconds=round(outcome.seconds, 3))
    # featurize_video already counted the tokens per stream; the worker added source and original name
    return Record.from_meta(outcome.key, outcome.sample["meta.json"], sample_dims(outcome.sample),
                            seconds=round(outcome.seconds, 3))


def _write(outcome: VideoOutcome, name: str, sink: ShardSink, output: OutputDir, summary: ExtractionSummary) -> None:
    """One finished input into the output: its sample into the open shard, or its failure into the manifest.
    A sample the shard cannot take (the writer refuses it before writing a byte) is that input's failure."""
    record = _record_of(outcome, name)
    if outcome.sample is not None:
        try:
            sink.write(outcome.sample, record)
            summary.ok += 1
            return
        except UnwritableSampleError as error:
            record = Record(outcome.key, outcome.source, "error", error=f"{type(error).__name__}: {error}",
                            original_name=name, seconds=record.seconds)
    output.append([record])  # failures are final at once: no shard to wait for
    summary.failed += 1
    summary.failures.add(record.source, record.error)


def _outcome_of(future: Any, source: str, key: str) -> VideoOutcome:
    """The task's result; a worker that died on this input (twice, by Dask's rules) is the input's error."""
    from distributed.scheduler import KilledWorker

    try:
        return future.result()
    except KilledWorker as error:
        return VideoOutcome(source, key, None, f"KilledWorker: worker died while extracting this input ({error}); "
                            "likely out of memory or a crash in a native library", 0.0)


def partition_root(out_dir: str | Path, partition: Partition | None) -> Path:
    """Where a run writes: ``out_dir``, or its partition's folder (see lamflow.contract)."""
    out_dir = Path(out_dir)
    if partition is None:
        if (out_dir / PARTITIONS_DIR).is_dir():
            raise ConfigError(f"{out_dir} is a partitioned tree ({PARTITIONS_DIR}/); extract into it with "
                              "--partition K/N, or use another --out")
        return out_dir
    if (out_dir / MANIFEST).exists():
        raise ConfigError(f"{out_dir} holds a single run's output; a partitioned run needs its own --out")
    root = out_dir / PARTITIONS_DIR / partition_dir_name(partition.index, partition.count)
    counts = {p.name.rsplit("-of-", 1)[1] for p in output_dirs(out_dir) if p != out_dir} - {root.name.rsplit("-of-", 1)[1]}
    if counts:
        raise DataFileError(f"{out_dir / PARTITIONS_DIR} holds partitions of {int(counts.pop())} and {partition.count} "
                            "parts; one tree takes one --partition K/N count (use another --out for another N)")
    return root


def _check_sibling_settings(root: Path, record: dict[str, Any]) -> None:
    """Partitions of one tree are one dataset: a partition may not use other settings than its siblings."""
    for sibling in output_dirs(root.parent.parent):
        if sibling != root and (sibling / EXTRACTION).exists():
            diffs = settings_differences(read_json(sibling / EXTRACTION), record)
            if diffs:
                raise SettingsMismatchError(
                    f"{sibling} was extracted with different settings ({'; '.join(diffs)}); the partitions of "
                    f"{root.parent.parent} form one dataset, so they take the same settings")
            return


def run_extraction(
    sources: Sequence[str],
    out_dir: str | Path,
    settings: ClipSettings,
    workers: int = 1,
    scheduler: str | None = None,
    shard_samples: int = DEFAULT_SHARD_SAMPLES,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    retry_failed: bool = False,
    texts: str | Path | None = None,
    overwrite: bool = False,
    extensions: Sequence[str] | None = None,
    task_resources: dict[str, float] | None = None,
    progress: bool = True,
    worker_timeout: float | None = DEFAULT_WORKER_TIMEOUT,
    cluster_status: Callable[[], str] | None = None,
    partition: Partition | None = None,
) -> ExtractionSummary:
    """Extract every input of ``sources`` (of ``partition``, when given) into ``out_dir`` (resuming), return
    what this run did.

    Inputs already in a shard are skipped; inputs that failed before are skipped unless
    ``retry_failed``. ``task_resources`` (e.g. ``{"GPU": 1}``) restricts tasks to workers started with
    matching ``--resources``. Raises SettingsMismatchError if ``out_dir`` holds other settings' output,
    and NoWorkersError (after committing what was written) once the cluster has had no worker for
    ``worker_timeout`` seconds (None: wait forever); ``cluster_status`` describes the cluster's jobs in
    that message and in the "waiting" lines (see watchdog.py).
    """
    settings.validate()
    if texts and settings.kind != "video":
        raise SourceError(f"texts are embedded per video; an {settings.kind} run takes no --texts")
    started = time.perf_counter()
    root = partition_root(out_dir, partition)
    record = run_record(settings, texts)
    if partition is not None:
        _check_sibling_settings(root, record)
    exts = extensions or MEDIA_EXTENSIONS[settings.kind]
    passes = [iter_sources(sources, exts)]  # the first pass is made here: a missing SOURCE fails before OUT is made
    texts_by_name = load_texts(texts) if texts else {}
    output = OutputDir(root, record, overwrite=overwrite)
    try:
        plan = make_plan(lambda: passes.pop() if passes else iter_sources(sources, exts), output.index,
                         output.root / MANIFEST, retry_failed, partition, set(texts_by_name) if texts else None)
        joined = join_names(texts_by_name, plan.text_candidates, what="--texts video")
        texts_by_key = {key: texts_by_name[name] for key, name in joined.items()}
        summary = ExtractionSummary(
            out_dir=str(root), inputs=plan.inputs, attempted=plan.todo_count, ok=0, failed=0,
            skipped_done=plan.skipped_done, skipped_failed=plan.skipped_failed,
            partition=f"{partition.index}/{partition.count}" if partition else None,
            repairs=list(output.repairs), unmatched_text_keys=sorted(set(texts_by_name) - set(joined.values())),
            plan_seconds=round(time.perf_counter() - started, 3),
        )
        if plan.todo_count:
            with output.shard_sink(shard_samples, shard_bytes) as sink:
                _run_tasks(plan, settings, texts_by_key, sink, output, summary, workers, scheduler,
                           task_resources, progress, worker_timeout, cluster_status)
            summary.shards_written = list(sink.committed)
        summary.seconds = round(time.perf_counter() - started, 3)
        summary.videos_per_second = round(summary.attempted / summary.seconds, 3) if summary.seconds else 0.0
        if plan.todo_count or output.repairs or not (output.root / STATS).exists():
            # a pass over every record: skipped when a rerun found nothing to do, so a finished partition
            # of 10^7 inputs reruns in plan time
            if output.index.superseded:
                output.compact()
            output.write_summaries(last_run=summary.to_json())
        return summary
    finally:
        output.close()


def _window(threads: int) -> int:
    """Tasks to keep submitted for a cluster of ``threads`` worker threads."""
    return TASKS_PER_THREAD * threads if threads else WINDOW_WITHOUT_WORKERS


def _run_tasks(
    plan: Plan,
    settings: ClipSettings,
    texts_by_key: dict[str, list[dict[str, str]]],
    sink: ShardSink,
    output: OutputDir,
    summary: ExtractionSummary,
    workers: int,
    scheduler: str | None,
    task_resources: dict[str, float] | None,
    progress: bool,
    worker_timeout: float | None,
    cluster_status: Callable[[], str] | None,
) -> None:
    from distributed import wait
    from tqdm import tqdm

    with dask_client(workers, scheduler) as client:
        watchdog = WorkerWatchdog(client, worker_timeout, cluster_status)
        window = _window(sum(client.nthreads().values()))
        queue = enumerate(plan.todo())
        running: dict[Any, tuple[int, Source, str]] = {}  # future -> (input index, input, key)
        names: dict[int, str] = {}  # input index -> name, for the inputs not yet written
        buffer = output.reorder_buffer()
        bar = tqdm(total=plan.todo_count, unit=settings.kind, disable=not progress, file=sys.stderr, dynamic_ncols=True)

        def submit_next() -> bool:
            index, (source, key, refused) = next(queue, (None, (None, None, None)))
            if source is None:
                return False
            names[index] = source.name
            if refused:  # a key clash: recorded as this input's failure, nothing to compute
                buffer.put(index, VideoOutcome(source.path, key, None, refused, 0.0))
                bar.update(1)
                return True
            extra = {"original_name": source.name}
            if source.metadata:
                extra["source_metadata"] = source.metadata
            future = client.submit(
                extract_video, source.path, key, settings, texts_by_key.get(key), extra,
                key=f"lamflow-extract-{key}-{uuid.uuid4().hex[:8]}", pure=False, resources=task_resources,
            )
            running[future] = (index, source, key)
            return True

        try:
            for _ in range(window):
                submit_next()
            while running or buffer:
                # Wake up at least every CHECK_EVERY seconds: a cluster without workers completes nothing.
                try:
                    done = wait(list(running), timeout=CHECK_EVERY, return_when="FIRST_COMPLETED").done if running else set()
                except TimeoutError:
                    done = set()
                if watchdog.due():
                    window = _window(watchdog.check())  # clusters grow and shrink (SLURM jobs end and are replaced)
                for future in sorted(done, key=lambda f: running[f][0]):
                    index, source, key = running.pop(future)
                    buffer.put(index, _outcome_of(future, source.path, key))
                    future.release()
                    bar.update(1)
                for index, outcome in buffer.ready():
                    _write(outcome, names.pop(index), sink, output, summary)
                # Keep `window` tasks running unless too many finished ones already wait for a slow one.
                while len(running) < window and len(running) + len(buffer) < REORDER_WINDOWS * window:
                    if not submit_next():
                        break
                bar.set_postfix(ok=summary.ok, failed=summary.failed, refresh=False)
        finally:
            # Stopping early (no workers, Ctrl-C, an error): what finished is written now, out of order,
            # rather than computed again by the next run.
            for index, outcome in buffer.drain():
                _write(outcome, names.pop(index), sink, output, summary)
            buffer.close()
            bar.close()
