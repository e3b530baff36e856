"""StreamingLoader: batches of the batch contract from lamflow shards, split over ranks and workers.

How an epoch is planned (identically on every rank, from the shard index alone):
0. the task's annotated names are joined to the index's samples once (``lamflow.contract.join_names``: an
   ambiguous name is an error before anything streams; the index finds the few samples each name could name, so
   no rank holds a Python object per sample), and the feature widths the index records are checked (a mixed set
   is an error naming the odd keys; samples of an index without widths are checked as they stream);
1. every shard's item count is the sum of ``task.num_items(name)`` over its joined samples;
2. shards are ordered (train: a permutation seeded by (seed, epoch); eval: as listed) and dealt greedily to
   ``world_size x num_workers`` slots, so each shard belongs to exactly one (rank, worker);
3. train: every rank gets the same item quota ``ceil(items_per_epoch / world_size)``, split over its workers.
   A worker that runs out of items starts another pass over its shards with a fresh shuffle (a worker
   whose shards yield nothing draws from all shards), so every rank yields exactly ``len(loader)`` batches
   and no rank waits at a collective for one that ran dry (DistributedSampler pads the same way);
   eval: each worker reads its shards once: every item exactly once over all ranks.
Each worker's items go through the sample shuffle buffer (train) and length bucketing into batches, collated
in the worker. The main process interleaves workers round-robin (skipping finished ones): the batch order is a
function of (seed, epoch, rank, config) only, which is what makes resume exact: ``load_state_dict`` restores
(epoch, batches_done) and each worker rebuilds its stream, skipping (without collating) the batches the
round-robin order had already taken from it.

Worker processes persist across epochs (one DataLoader with ``persistent_workers=True``): starting them per
epoch made short epochs many times slower. A persistent worker keeps the dataset object it was started with,
so the epoch cannot travel in that object's attributes; the main process writes (epoch, seed, batches each
worker skips) into shared memory before every iteration and each worker reads it when the DataLoader
restarts its iterator (see ``_RankStream``).
"""
from __future__ import annotations

import logging
import math
import signal
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lamflow.contract import TEXT_STREAM
from lamflow.datasets.bucketing import batched, bucket_batches
from lamflow.datasets.collate import collate_streams, total_tokens
from lamflow.datasets.loader_config import LoaderConfig, is_int
from lamflow.datasets.shardlist import ShardInfo, first_sample_dims, resolve_shards
from lamflow.datasets.stream import (
    MAX_KEPT_REASONS,
    TASK_STREAMS,
    SkipCounter,
    assign_shards,
    count_shard_samples,
    decode_samples,
    expand_items,
    shuffle_items,
    tar_samples,
)
from lamflow.datasets.task import Task
from lamflow.errors import DataFileError, LamflowError

log = logging.getLogger(__name__)

MODES = ("train", "eval")
# Independent random streams per purpose, so e.g. changing the buffer size leaves the shard order alone.
SHARD_ORDER, ITEM_BUFFER, BATCH_ORDER = 0, 1, 2
COUNTERS = ("skipped_corrupt", "skipped_width", "skipped_empty", "read_errors", "missing_samples",
            "samples_without_items", "samples")
# Version of ``StreamingLoader.state_dict``: bump when its meaning changes, so an old checkpoint is refused
# instead of resuming at the wrong place.
STATE_VERSION = 2


class LoaderStateError(LamflowError, ValueError):
    """A saved loader position that does not fit this loader (version, or a malformed state)."""


@dataclass(frozen=True)
class _EpochPlan:
    epoch: int
    seed: int  # the loader's seed, or the saved run's after load_state_dict
    worker_shards: tuple[tuple[int, ...], ...]  # this rank's shards, per worker
    quotas: tuple[int, ...] | None  # train: items per worker; eval: None (read the shards once)
    worker_batches: tuple[int, ...]  # planned batches per worker


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng([int(p) for p in parts])


def _round_robin_position(worker_batches: Sequence[int], batches_done: int) -> tuple[list[int], int]:
    """(batches taken from each worker, next worker) after ``batches_done`` round-robin batches."""
    if batches_done > sum(worker_batches):
        raise LoaderStateError(
            f"loader state: batches_done={batches_done} exceeds the {sum(worker_batches)} batches of the epoch; "
            "resume with the LoaderConfig, world_size and task the state was saved with"
        )
    taken, worker = [0] * len(worker_batches), 0
    while batches_done > 0:
        if taken[worker] < worker_batches[worker]:
            taken[worker] += 1
            batches_done -= 1
        worker = (worker + 1) % len(worker_batches)
    return taken, worker


def _as_is(message: Any) -> Any:
    return message


def _ignore_stop_signals(_worker_id: int) -> None:
    """Loader workers ignore the signals that ask a training job to stop (scancel and a SLURM requeue send
    SIGTERM to every process of the job; a walltime warning SIGUSR1): the trainer saves a checkpoint
    before it exits, which needs its workers alive until then. They end with the trainer's process."""
    for stop in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(stop, signal.SIG_IGN)


@dataclass(frozen=True)
class _Index:
    """What every worker needs to know about the shard set, computed once in the main process."""

    shards: Sequence[ShardInfo]
    joined: dict[str, str]  # sample key -> the annotated name it is joined to
    widths: dict[str, int]  # feature width per shard stream (streams the index records)


class _EpochStream:
    """One epoch of one rank as seen by one worker: its shards, read into batches (see module docstring)."""

    def __init__(self, config: LoaderConfig, task: Task, index: _Index, rank: int, plan: _EpochPlan, skips: Sequence[int]):
        self.config, self.task, self.index, self.rank, self.plan, self.skips = config, task, index, rank, plan, skips
        self.shards = index.shards
        self.shard_streams = [s for s in config.streams if s not in TASK_STREAMS]

    def _rng(self, worker: int, purpose: int, pass_index: int = 0) -> np.random.Generator:
        return _rng(self.plan.seed, self.plan.epoch, self.rank, worker, purpose, pass_index)

    def _items(self, sample: dict) -> Iterable[dict]:
        name = self.index.joined.get(sample["key"])
        return self.task.items(sample, name) if name is not None else ()

    def _read(self, shard_ids: Sequence[int], counter: SkipCounter) -> Iterator[dict]:
        shards = [self.shards[i] for i in shard_ids]
        raws = count_shard_samples(tar_samples([s.url for s in shards], counter), {s.url: s.num_samples for s in shards}, counter)
        samples = decode_samples(raws, self.shard_streams, counter, self.index.widths, self.config.required_streams)
        return expand_items(samples, self._items, counter)

    def _train_items(self, worker: int, counter: SkipCounter) -> Iterator[dict]:
        quota, pool = self.plan.quotas[worker], list(self.plan.worker_shards[worker])
        produced = pass_index = 0
        while produced < quota:
            if not pool:
                pool = list(range(len(self.shards)))
            order = [pool[i] for i in self._rng(worker, SHARD_ORDER, pass_index).permutation(len(pool))]
            before = produced
            for item in shuffle_items(self._read(order, counter), self.config.shuffle_buffer,
                                      self._rng(worker, ITEM_BUFFER, pass_index)):
                yield item
                produced += 1
                if produced == quota:
                    return
            if produced == before:
                if len(pool) == len(self.shards):
                    raise DataFileError(
                        f"no usable item in any shard for this task; skipped: {dict(counter.counts)}, e.g. "
                        f"{counter.reasons[:1] or 'no reason recorded'}; check that the shards match the annotations"
                    )
                log.warning("rank %d worker %d: its shards yield no items; drawing from all shards", self.rank, worker)
                pool = []
            pass_index += 1

    def _batches(self, worker: int, counter: SkipCounter) -> Iterator[list[dict]]:
        config = self.config
        if self.plan.quotas is not None:
            items = self._train_items(worker, counter)
        else:
            items = self._read(self.plan.worker_shards[worker], counter)
        if not config.bucket_by_length:
            return batched(items, config.batch_size)
        order = self._rng(worker, BATCH_ORDER) if self.plan.quotas is not None else None
        return bucket_batches(items, config.batch_size, config.bucket_buffer,
                              lambda item: total_tokens(item, config.streams, config.max_stream_tokens), order)

    def __iter__(self) -> Iterator[tuple[str, int, dict | None, dict]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        counter = SkipCounter()
        # A task drawing per-item randomness (QVHighlightsTask's window cut) draws it from the epoch's seed, here
        # in the worker that makes the items, so a resumed epoch yields the same items.
        self.task.start_epoch(self.plan.seed, self.plan.epoch)
        try:
            for index, items in enumerate(self._batches(worker, counter)):
                if index < self.skips[worker]:
                    continue  # taken before the resume point
                batch = collate_streams(items, self.config.streams, self.config.max_stream_tokens, self.config.fixed_lengths)
                batch.update(self.task.collate(items))
                yield "batch", worker, batch, counter.take()
        except LamflowError as error:
            # Sent as a message, not raised: a DataLoader worker's exception reaches the main process wrapped
            # in a multi-line traceback text, and a user error must stay one line.
            yield "error", worker, None, {**counter.take(), "error": str(error)}
            return
        yield "end", worker, None, counter.take()


class _RankStream(IterableDataset):
    """Every epoch of one rank: the DataLoader's dataset, kept by its persistent workers.

    ``start`` is called in the main process before each iteration; ``__iter__`` runs in every worker when the
    DataLoader (re)starts its iterator, after ``start`` (the restart message reaches a worker through a queue
    the main process writes after ``start``), and reads the position once, so a worker still finishing an
    abandoned iteration keeps its own epoch (the DataLoader discards those stale batches).
    """

    def __init__(self, config: LoaderConfig, task: Task, index: _Index, shard_items: Sequence[int],
                 rank: int, world_size: int, mode: str):
        self.config, self.task, self.index, self.shards, self.shard_items = config, task, index, index.shards, shard_items
        self.rank, self.world_size, self.mode = rank, world_size, mode
        self.workers = max(1, config.num_workers)
        # (epoch, seed, batches to skip per worker) in shared memory, visible to already running workers.
        self.position = torch.zeros(2 + self.workers, dtype=torch.int64).share_memory_()

    def plan(self, epoch: int, seed: int) -> _EpochPlan:
        """The epoch's shards, quotas and batches per worker of this rank (the same on every rank)."""
        workers, config = self.workers, self.config
        train = self.mode == "train"
        order = _rng(seed, epoch, SHARD_ORDER).permutation(len(self.shards)) if train else np.arange(len(self.shards))
        slots = assign_shards([self.shard_items[i] for i in order], self.world_size * workers)
        mine = tuple(tuple(int(order[j]) for j in slots[self.rank * workers + w]) for w in range(workers))
        if train:
            per_rank = math.ceil((config.samples_per_epoch or sum(self.shard_items)) / self.world_size)
            quotas = tuple(per_rank // workers + (w < per_rank % workers) for w in range(workers))
            counts = quotas
        else:
            quotas = None
            counts = tuple(sum(self.shard_items[i] for i in shards) for shards in mine)
        batches = tuple(math.ceil(count / config.batch_size) for count in counts)
        return _EpochPlan(epoch=epoch, seed=seed, worker_shards=mine, quotas=quotas, worker_batches=batches)

    def start(self, plan: _EpochPlan, skips: Sequence[int]) -> None:
        self.position.copy_(torch.tensor([plan.epoch, plan.seed, *skips], dtype=torch.int64))

    def __iter__(self) -> Iterator[tuple[str, int, dict | None, dict]]:
        epoch, seed, *skips = self.position.tolist()
        return iter(_EpochStream(self.config, self.task, self.index, self.rank, self.plan(epoch, seed), skips))


class StreamingLoader:
    """Batches (the batch contract) of one rank; see the module docstring for the epoch plan.

    mode "train": shuffled, the same number of batches on every rank; mode "eval": no shuffle, every item
    exactly once over all ranks (ranks may differ in count; ``samples_per_epoch`` is ignored).
    Iterating to the end of a train epoch moves to the next epoch (call ``set_epoch`` or not); an eval epoch
    starts over. ``state_dict()`` after the k-th batch of an epoch resumes with batch k+1.
    """

    def __init__(self, shards: str | Sequence[str], task: Task, config: LoaderConfig | None = None, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, mode: str = "train"):
        config = config or LoaderConfig()
        if mode not in MODES:
            raise ValueError(f"StreamingLoader mode: expected one of {MODES}, got {mode!r}")
        if not (is_int(world_size) and world_size >= 1 and is_int(rank) and 0 <= rank < world_size):
            raise ValueError(f"StreamingLoader: need 0 <= rank < world_size, got rank={rank!r} world_size={world_size!r}")
        if not (is_int(seed) and seed >= 0):
            raise ValueError(f"StreamingLoader: seed must be an int >= 0, got {seed!r}")
        self.config, self.task, self.rank, self.world_size, self.mode = config, task, rank, world_size, mode
        self.spec, self.seed = shards, seed
        self.shards = resolve_shards(shards)
        matches = self.shards.join(task.names(), what=f"{task.source}")  # (shard, key, annotated name)
        joined = {key: name for _, key, name in matches}
        if task.every_name_in_shards:
            unknown = sorted(set(task.names()) - set(joined.values()))
            if unknown:
                more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
                raise DataFileError(
                    f"{task.source}: {len(unknown)} annotated video(s) are not in the shards {shards!r}: "
                    f"{', '.join(unknown[:5])}{more}; extract them (a failed video: lamflow extract --retry-failed) "
                    "or remove their annotations"
                )
        shard_streams = [s for s in config.streams if s not in TASK_STREAMS]
        widths = self.shards.recorded_dims([*shard_streams, TEXT_STREAM])
        recorded = self.shards.recorded_streams()
        if not recorded:  # the index does not say (tar urls, an older manifest): the first sample's headers do
            first = first_sample_dims(self.shards[0].url)
            recorded = set(first)
            widths = {s: w for s, w in first.items() if w is not None and s in (*shard_streams, TEXT_STREAM)}
        missing = [s for s in shard_streams if s not in recorded]
        if missing:
            raise DataFileError(f"stream(s) {missing} are not in the shards of {shards!r} (they hold {sorted(recorded)}); "
                                "set data.loader.streams to streams the shards contain")
        index = _Index(list(self.shards), joined, widths)  # what workers get: no per-sample index
        self.shard_items = [0] * len(self.shards)
        for shard, _, name in matches:
            self.shard_items[shard] += task.num_items(name)
        if not sum(self.shard_items):
            raise DataFileError(
                f"no items: none of the {self.shards.num_samples} samples in {shards!r} (keys like "
                f"{self.shards.first_keys(3)}) is named by "
                f"{task.source}; check that the annotations name the videos in these shards"
            )
        self.stream_dims = widths  # feature width of each stream the shards hold (text: the shards' text tokens)
        self._stream = _RankStream(config, task, index, self.shard_items, rank, world_size, mode)
        self._workers = self._stream.workers
        slots = world_size * self._workers
        if len(self.shards) < slots:
            # Shards are the unit of the split: a slot without a shard idles (eval) or draws from all shards (train).
            log.warning("%d shards for %d ranks x %d workers: write more, smaller shards for an exact split",
                        len(self.shards), world_size, self._workers)
        self._dataloader: DataLoader | None = None  # started on the first iteration, reused by every epoch
        self.epoch = 0
        self.batches_done = 0
        self.stats: dict[str, Any] = {"items": 0, "batches": 0, **{name: 0 for name in COUNTERS}, "skip_reasons": []}

    def _plan(self, epoch: int) -> _EpochPlan:
        return self._stream.plan(epoch, self.seed)

    def _messages(self, plan: _EpochPlan, skips: Sequence[int]) -> Iterator[tuple[str, int, dict | None, dict]]:
        self._stream.start(plan, skips)
        if not self.config.num_workers:
            return iter(self._stream)
        if self._dataloader is None:
            # A generator of its own: without it, every new iterator draws the workers' base seed from
            # torch's global RNG, which would shift the training run's dropout stream by where epochs start
            # (and break bit-exact resume). Shuffling never uses it: the stream seeds from (seed, epoch).
            self._dataloader = DataLoader(self._stream, batch_size=None, num_workers=self.config.num_workers,
                                          collate_fn=_as_is, persistent_workers=True, worker_init_fn=_ignore_stop_signals,
                                          generator=torch.Generator().manual_seed(self.seed))
        # With persistent workers this restarts the running workers' iterators (an unfinished previous
        # iteration of this loader stops: iterate one epoch at a time).
        return iter(self._dataloader)

    def __len__(self) -> int:
        """Batches per epoch on this rank (eval: as planned from the index; fewer if samples are corrupt)."""
        return sum(self._plan(self.epoch).worker_batches)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (it seeds the shuffles). Re-selecting the current epoch keeps a resumed position."""
        if not (is_int(epoch) and epoch >= 0):
            raise ValueError(f"set_epoch: expected an int >= 0, got {epoch!r}")
        if epoch != self.epoch:
            self.epoch, self.batches_done = epoch, 0

    def state_dict(self) -> dict:
        """The position, and what the epoch plan was made from: a resume under another world size, worker
        count or shard set is re-planned explicitly (see :meth:`load_state_dict`), never misread."""
        return {"version": STATE_VERSION, "epoch": self.epoch, "batches_done": self.batches_done, "seed": self.seed,
                "world_size": self.world_size, "num_workers": self._workers, "items": sum(self.shard_items)}

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` was saved. Saved under the same plan (world size, workers, shard set),
        the batches continue exactly. Saved under another plan, the epoch is re-planned for this one and
        the position moved to the same fraction of it (logged): the epoch's order changes, nothing else."""
        if state.get("version") != STATE_VERSION:
            raise LoaderStateError(
                f"loader state version {state.get('version')!r} is not {STATE_VERSION}: the checkpoint was written by "
                "another lamflow version whose data position cannot be continued; start a new run"
            )
        for name in ("epoch", "batches_done", "seed", "world_size", "num_workers", "items"):
            if not (is_int(state.get(name)) and state[name] >= 0):
                raise LoaderStateError(f"loader state: '{name}' must be an int >= 0, got {state.get(name)!r}")
        if state["seed"] != self.seed:
            log.warning("loader state seed %d replaces the seed %d to continue the saved run", state["seed"], self.seed)
            self.seed = state["seed"]
        batches_done = state["batches_done"]
        saved_plan = (state["world_size"], state["num_workers"], state["items"])
        if saved_plan != (self.world_size, self._workers, sum(self.shard_items)):
            planned = sum(self._plan(state["epoch"]).worker_batches)
            fraction = batches_done * state["world_size"] / max(1, planned * self.world_size)
            batches_done = min(planned, round(fraction * planned))
            log.warning(
                "resuming a loader saved with world size %d, %d workers, %d items under world size %d, %d workers, "
                "%d items: epoch %d is re-planned and continues at batch %d of %d (its order differs from the saved run)",
                *saved_plan, self.world_size, self._workers, sum(self.shard_items), state["epoch"], batches_done, planned)
        _round_robin_position(self._plan(state["epoch"]).worker_batches, batches_done)  # validates
        self.epoch, self.batches_done = state["epoch"], batches_done

    def _record(self, delta: dict) -> None:
        for name, count in delta["counts"].items():
            self.stats[name] = self.stats.get(name, 0) + count
        reasons = self.stats["skip_reasons"]
        reasons.extend(delta["reasons"][: max(0, MAX_KEPT_REASONS - len(reasons))])

    def __iter__(self) -> Iterator[dict]:
        plan = self._plan(self.epoch)
        if self.mode == "train" and self.batches_done >= sum(plan.worker_batches):
            # Saved right after the epoch's last batch: continue with the next epoch without re-reading this one.
            self.epoch, self.batches_done = self.epoch + 1, 0
            plan = self._plan(self.epoch)
        taken, next_worker = _round_robin_position(plan.worker_batches, self.batches_done)
        messages = self._messages(plan, taken)
        pending: dict[int, deque] = {w: deque() for w in range(self._workers)}
        ended: set[int] = set()
        while len(ended) < self._workers or any(pending.values()):
            worker = next_worker
            while not pending[worker] and worker not in ended:
                message = next(messages, None)
                if message is None:  # every worker sends "end" last, so this only guards against a hang
                    ended.update(pending)
                    break
                kind, sender, batch, delta = message
                self._record(delta)
                if kind == "error":
                    raise LamflowError(delta["error"])
                if kind == "end":
                    ended.add(sender)
                else:
                    pending[sender].append(batch)
            next_worker = (worker + 1) % self._workers
            if pending[worker]:
                batch = pending[worker].popleft()
                # Count before yielding: a checkpoint taken while the caller holds batch k says k are done.
                self.batches_done += 1
                self.stats["batches"] += 1
                self.stats["items"] += len(batch["sample_ids"])
                yield batch
        self.batches_done = 0
        if self.mode == "train":
            self.epoch += 1
