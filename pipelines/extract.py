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
from lamflow.contract import Record, join_names, sample_dims
from lamflow.errors import ConfigError
from lamflow.pipelines.keys import assign_keys
from lamflow.pipelines.manifest import OutputDir
from lamflow.pipelines.settings import ClipSettings
from lamflow.pipelines.shards import DEFAULT_SHARD_BYTES, DEFAULT_SHARD_SAMPLES, ShardSink
from lamflow.pipelines.sources import MEDIA_EXTENSIONS, Source, SourceError, expand_sources
from lamflow.pipelines.texts import load_texts, texts_fingerprint
from lamflow.pipelines.watchdog import CHECK_EVERY, DEFAULT_WORKER_TIMEOUT, WorkerWatchdog
from lamflow.pipelines.worker import VideoOutcome, extract_video

# Settings that change how fast features are computed, not what they are: a resume may change them.
RUNTIME_FIELDS = ("device", "frame_batch")
TASKS_PER_THREAD = 2  # submitted-but-unfinished tasks per worker thread: keeps workers busy, memory bounded
WINDOW_WITHOUT_WORKERS = 64  # window while an external cluster has no workers yet (e.g. SLURM jobs queued)
# Finished videos held back (at most this many windows) while an earlier, slower one is still running, so
# samples reach the shards in input order: the same inputs give the same shards however workers finish.
REORDER_WINDOWS = 4


@dataclass
class ExtractionSummary:
    """What one run did (also stored as ``last_run`` in stats.json)."""

    out_dir: str
    inputs: int  # media inputs named by SOURCES
    attempted: int  # extracted in this run
    ok: int  # succeeded in this run
    failed: int  # failed in this run
    skipped_done: int  # already in a shard from an earlier run
    skipped_failed: int  # failed in an earlier run and not retried (see --retry-failed)
    shards_written: list[str] = field(default_factory=list)
    seconds: float = 0.0
    videos_per_second: float = 0.0
    repairs: list[str] = field(default_factory=list)  # fixes applied after a killed run
    unmatched_text_keys: list[str] = field(default_factory=list)  # --texts video names that match no input
    failures: dict[str, str] = field(default_factory=dict)  # source -> error, this run

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "failures"}


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


def _record_of(outcome: VideoOutcome, names: dict[str, str]) -> Record:
    if outcome.sample is None:
        return Record(outcome.key, outcome.source, "error", error=outcome.error,
                      original_name=names[outcome.source], seconds=round(outcome.seconds, 3))
    # featurize_video already counted the tokens per stream; the worker added source and original name
    return Record.from_meta(outcome.key, outcome.sample["meta.json"], sample_dims(outcome.sample),
                            seconds=round(outcome.seconds, 3))


def _write(outcome: VideoOutcome, names: dict[str, str], sink: ShardSink, output: OutputDir,
           summary: ExtractionSummary) -> None:
    """One finished input into the output: its sample into the open shard, or its failure into the manifest."""
    record = _record_of(outcome, names)
    if outcome.sample is None:
        output.append([record])  # failures are final at once: no shard to wait for
        summary.failed += 1
        summary.failures[outcome.source] = outcome.error or ""
    else:
        sink.write(outcome.sample, record)
        summary.ok += 1


def _outcome_of(future: Any, source: str, key: str) -> VideoOutcome:
    """The task's result; a worker that died on this input (twice, by Dask's rules) is the input's error."""
    from distributed.scheduler import KilledWorker

    try:
        return future.result()
    except KilledWorker as error:
        return VideoOutcome(source, key, None, f"worker died while extracting this input ({error}); "
                            "likely out of memory or a crash in a native library", 0.0)


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
) -> ExtractionSummary:
    """Extract every input of ``sources`` into ``out_dir`` (resuming), return what this run did.

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
    inputs: list[Source] = expand_sources(sources, extensions or MEDIA_EXTENSIONS[settings.kind])
    texts_by_name = load_texts(texts) if texts else {}
    output = OutputDir(Path(out_dir), run_record(settings, texts), overwrite=overwrite)
    try:
        done, failed = output.done_sources(), output.failed_sources()
        names = {s.path: s.name for s in inputs}
        keys = assign_keys(names.items(), taken=output.keys_by_source())
        joined = join_names(texts_by_name, ((keys[s], names[s]) for s in names), what="--texts video")
        texts_by_key = {key: texts_by_name[name] for key, name in joined.items()}
        todo = [s for s in inputs if s.path not in done and (retry_failed or s.path not in failed)]
        summary = ExtractionSummary(
            out_dir=str(out_dir),
            inputs=len(inputs),
            attempted=len(todo),
            ok=0,
            failed=0,
            skipped_done=sum(s.path in done for s in inputs),
            skipped_failed=sum(s.path in failed and not retry_failed for s in inputs),
            repairs=list(output.repairs),
            unmatched_text_keys=sorted(set(texts_by_name) - set(joined.values())),
        )
        if todo:
            with output.shard_sink(shard_samples, shard_bytes) as sink:
                _run_tasks(todo, keys, names, settings, texts_by_key, sink, output, summary, workers, scheduler,
                           task_resources, progress, worker_timeout, cluster_status)
            summary.shards_written = list(sink.committed)
        summary.seconds = round(time.perf_counter() - started, 3)
        summary.videos_per_second = round(summary.attempted / summary.seconds, 3) if summary.seconds else 0.0
        output.compact()
        output.write_summaries(last_run=summary.to_json())
        return summary
    finally:
        output.close()


def _window(threads: int) -> int:
    """Tasks to keep submitted for a cluster of ``threads`` worker threads."""
    return TASKS_PER_THREAD * threads if threads else WINDOW_WITHOUT_WORKERS


def _run_tasks(
    todo: list[Source],
    keys: dict[str, str],
    names: dict[str, str],
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
        queue = iter(enumerate(todo))
        index_of: dict[Any, int] = {}  # running future -> input index
        finished: dict[int, VideoOutcome] = {}  # done, waiting for every earlier input to be written
        written = 0

        def submit_next() -> bool:
            index, source = next(queue, (None, None))
            if source is None:
                return False
            key = keys[source.path]
            extra = {"original_name": names[source.path]}
            if source.metadata:
                extra["source_metadata"] = source.metadata
            future = client.submit(
                extract_video, source.path, key, settings, texts_by_key.get(key), extra,
                key=f"lamflow-extract-{key}-{uuid.uuid4().hex[:8]}", pure=False, resources=task_resources,
            )
            index_of[future] = index
            return True

        for _ in range(window):
            submit_next()
        bar = tqdm(total=len(todo), unit="video", disable=not progress, file=sys.stderr, dynamic_ncols=True)
        try:
            while index_of:
                # Wake up at least every CHECK_EVERY seconds: a cluster without workers completes nothing.
                try:
                    done = wait(list(index_of), timeout=CHECK_EVERY, return_when="FIRST_COMPLETED").done
                except TimeoutError:
                    done = set()
                if watchdog.due():
                    window = _window(watchdog.check())  # clusters grow and shrink (adaptive SLURM jobs)
                for future in sorted(done, key=index_of.get):
                    index = index_of.pop(future)
                    source = todo[index]
                    finished[index] = _outcome_of(future, source.path, keys[source.path])
                    future.release()
                    bar.update(1)
                while written in finished:
                    _write(finished.pop(written), names, sink, output, summary)
                    written += 1
                # Keep `window` tasks running unless too many finished ones already wait for a slow one.
                while len(index_of) < window and len(index_of) + len(finished) < REORDER_WINDOWS * window:
                    if not submit_next():
                        break
                bar.set_postfix(ok=summary.ok, failed=summary.failed, refresh=False)
        finally:
            bar.close()
