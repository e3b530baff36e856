"""StreamingLoader: batches of the batch contract from lamflow shards, split over ranks and workers.

How an epoch is planned (identically on every rank, from the shard index alone):
1. every shard's item count comes from ``task.num_items(names)`` (original names from the manifest, else keys);
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
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lamflow.datasets.bucketing import batched, bucket_batches
from lamflow.datasets.collate import collate_streams, total_tokens
from lamflow.datasets.shardlist import ShardInfo, resolve_shards
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

log = logging.getLogger(__name__)

MODES = ("train", "eval")
# Independent random streams per purpose, so e.g. changing the buffer size leaves the shard order alone.
SHARD_ORDER, ITEM_BUFFER, BATCH_ORDER = 0, 1, 2
COUNTERS = ("skipped_corrupt", "read_errors", "missing_samples", "samples_without_items", "samples")


class Task(Protocol):
    def items(self, sample: dict) -> Iterable[dict]: ...

    def collate(self, items: list[dict]) -> dict: ...

    def num_items(self, keys: Sequence[str]) -> int: ...


def _check(condition: bool, name: str, expected: str, value: Any) -> None:
    if not condition:
        raise ValueError(f"LoaderConfig.{name}: expected {expected}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class LoaderConfig:
    shards: str  # extraction output DIR (has shards/ + sizes.json) or a list/brace pattern of .tar urls
    streams: tuple[str, ...] = ("text", "video", "audio")  # order of the blocks in the concatenated sequence
    batch_size: int = 8
    num_workers: int = 0  # torch DataLoader workers; shards split by worker
    shuffle_buffer: int = 256  # items in the sample shuffle buffer (train)
    seed: int = 0
    samples_per_epoch: int | None = None  # train: items per epoch over all ranks (None = one pass)
    bucket_by_length: bool = True
    bucket_buffer: int = 64  # items sorted together by length; at least batch_size
    max_stream_tokens: dict[str, int] | None = None  # optional truncation per stream (first tokens kept)

    def __post_init__(self) -> None:
        shards_ok = isinstance(self.shards, str) and bool(self.shards) or (
            isinstance(self.shards, (list, tuple)) and bool(self.shards) and all(isinstance(s, str) for s in self.shards)
        )
        _check(shards_ok, "shards", "a DIR, a brace pattern or a non-empty list of .tar urls", self.shards)
        if isinstance(self.streams, list):
            self.streams = tuple(self.streams)  # YAML gives lists
        _check(
            isinstance(self.streams, tuple) and bool(self.streams) and all(isinstance(s, str) for s in self.streams)
            and len(set(self.streams)) == len(self.streams),
            "streams", "a non-empty list of distinct stream names, e.g. ['text', 'video', 'audio']", self.streams,
        )
        for name, minimum in (("batch_size", 1), ("num_workers", 0), ("shuffle_buffer", 1), ("seed", 0), ("bucket_buffer", 1)):
            value = getattr(self, name)
            _check(_is_int(value) and value >= minimum, name, f"an int >= {minimum}", value)
        _check(self.samples_per_epoch is None or (_is_int(self.samples_per_epoch) and self.samples_per_epoch >= 1),
               "samples_per_epoch", "null (one pass) or an int >= 1", self.samples_per_epoch)
        _check(isinstance(self.bucket_by_length, bool), "bucket_by_length", "true or false", self.bucket_by_length)
        _check(not self.bucket_by_length or self.bucket_buffer >= self.batch_size, "bucket_buffer",
               f"at least batch_size ({self.batch_size}) items when bucket_by_length is on", self.bucket_buffer)
        limits = self.max_stream_tokens
        _check(limits is None or (isinstance(limits, dict) and all(
            name in self.streams and _is_int(n) and n >= 1 for name, n in limits.items())),
            "max_stream_tokens", f"null or {{stream: int >= 1}} with streams from {list(self.streams)}", limits)


@dataclass(frozen=True)
class _EpochPlan:
    epoch: int
    seed: int  # may differ from a worker's copy of LoaderConfig.seed after load_state_dict
    worker_shards: tuple[tuple[int, ...], ...]  # this rank's shards, per worker
    quotas: tuple[int, ...] | None  # train: items per worker; eval: None (read the shards once)
    worker_batches: tuple[int, ...]  # planned batches per worker


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng([int(p) for p in parts])


def _round_robin_position(worker_batches: Sequence[int], batches_done: int) -> tuple[list[int], int]:
    """(batches taken from each worker, next worker) after ``batches_done`` round-robin batches."""
    if batches_done > sum(worker_batches):
        raise ValueError(
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


class _EpochStream:
    """One epoch of one rank as seen by one worker: its shards, read into batches (see module docstring)."""

    def __init__(self, config: LoaderConfig, task: Task, shards: Sequence[ShardInfo], rank: int,
                 plan: _EpochPlan, skips: Sequence[int]):
        self.config, self.task, self.shards, self.rank, self.plan, self.skips = config, task, shards, rank, plan, skips
        self.shard_streams = [s for s in config.streams if s not in TASK_STREAMS]

    def _rng(self, worker: int, purpose: int, pass_index: int = 0) -> np.random.Generator:
        return _rng(self.plan.seed, self.plan.epoch, self.rank, worker, purpose, pass_index)

    def _read(self, shard_ids: Sequence[int], counter: SkipCounter) -> Iterator[dict]:
        shards = [self.shards[i] for i in shard_ids]
        raws = count_shard_samples(tar_samples([s.url for s in shards], counter), {s.url: s.num_samples for s in shards}, counter)
        return expand_items(decode_samples(raws, self.shard_streams, counter), self.task.items, counter)

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
                    raise RuntimeError(
                        "no readable item in any shard for this task (see the 'skipped' warnings and loader.stats); "
                        "check that the shards match the annotations"
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
        for index, items in enumerate(self._batches(worker, counter)):
            if index < self.skips[worker]:
                continue  # taken before the resume point
            batch = collate_streams(items, self.config.streams, self.config.max_stream_tokens)
            batch.update(self.task.collate(items))
            yield "batch", worker, batch, counter.take()
        yield "end", worker, None, counter.take()


class _RankStream(IterableDataset):
    """Every epoch of one rank: the DataLoader's dataset, kept by its persistent workers.

    ``start`` is called in the main process before each iteration; ``__iter__`` runs in every worker when the
    DataLoader (re)starts its iterator, after ``start`` (the restart message reaches a worker through a queue
    the main process writes after ``start``), and reads the position once, so a worker still finishing an
    abandoned iteration keeps its own epoch (the DataLoader discards those stale batches).
    """

    def __init__(self, config: LoaderConfig, task: Task, shards: Sequence[ShardInfo], shard_items: Sequence[int],
                 rank: int, world_size: int, mode: str):
        self.config, self.task, self.shards, self.shard_items = config, task, shards, shard_items
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
        return iter(_EpochStream(self.config, self.task, self.shards, self.rank, self.plan(epoch, seed), skips))


class StreamingLoader:
    """Batches (the batch contract) of one rank; see the module docstring for the epoch plan.

    mode "train": shuffled, the same number of batches on every rank; mode "eval": no shuffle, every item
    exactly once over all ranks (ranks may differ in count; ``samples_per_epoch`` is ignored).
    Iterating to the end of a train epoch moves to the next epoch (call ``set_epoch`` or not); an eval epoch
    starts over. ``state_dict()`` after the k-th batch of an epoch resumes with batch k+1.
    """

    def __init__(self, config: LoaderConfig, task: Task, rank: int = 0, world_size: int = 1, mode: str = "train"):
        if mode not in MODES:
            raise ValueError(f"StreamingLoader mode: expected one of {MODES}, got {mode!r}")
        if not (_is_int(world_size) and world_size >= 1 and _is_int(rank) and 0 <= rank < world_size):
            raise ValueError(f"StreamingLoader: need 0 <= rank < world_size, got rank={rank!r} world_size={world_size!r}")
        self.config, self.task, self.rank, self.world_size, self.mode = config, task, rank, world_size, mode
        self.shards = resolve_shards(config.shards)
        self.shard_items = [int(task.num_items(shard.names)) for shard in self.shards]
        if not sum(self.shard_items):
            examples = [key for shard in self.shards for key in shard.keys][:3]
            raise ValueError(
                f"no items: none of the {sum(s.num_samples for s in self.shards)} samples in {config.shards!r} "
                f"(keys like {examples}) match the task's annotations; check the shard DIR and the annotation file"
            )
        self._stream = _RankStream(config, task, self.shards, self.shard_items, rank, world_size, mode)
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
        return self._stream.plan(epoch, self.config.seed)

    def _messages(self, plan: _EpochPlan, skips: Sequence[int]) -> Iterator[tuple[str, int, dict | None, dict]]:
        self._stream.start(plan, skips)
        if not self.config.num_workers:
            return iter(self._stream)
        if self._dataloader is None:
            # A generator of its own: without it, every new iterator draws the workers' base seed from
            # torch's global RNG, which would shift the training run's dropout stream by where epochs start
            # (and break bit-exact resume). Shuffling never uses it: the stream seeds from (seed, epoch).
            self._dataloader = DataLoader(self._stream, batch_size=None, num_workers=self.config.num_workers,
                                          collate_fn=_as_is, persistent_workers=True,
                                          generator=torch.Generator().manual_seed(self.config.seed))
        # With persistent workers this restarts the running workers' iterators (an unfinished previous
        # iteration of this loader stops: iterate one epoch at a time).
        return iter(self._dataloader)

    def __len__(self) -> int:
        """Batches per epoch on this rank (eval: as planned from the index; fewer if samples are corrupt)."""
        return sum(self._plan(self.epoch).worker_batches)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (it seeds the shuffles). Re-selecting the current epoch keeps a resumed position."""
        if not (_is_int(epoch) and epoch >= 0):
            raise ValueError(f"set_epoch: expected an int >= 0, got {epoch!r}")
        if epoch != self.epoch:
            self.epoch, self.batches_done = epoch, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done, "seed": self.config.seed}

    def load_state_dict(self, state: dict) -> None:
        for name in ("epoch", "batches_done", "seed"):
            if not (_is_int(state.get(name)) and state[name] >= 0):
                raise ValueError(f"loader state: '{name}' must be an int >= 0, got {state.get(name)!r}")
        if state["seed"] != self.config.seed:
            log.warning("loader state seed %d replaces LoaderConfig.seed %d to continue the saved run",
                        state["seed"], self.config.seed)
            self.config.seed = state["seed"]
        _round_robin_position(self._plan(state["epoch"]).worker_batches, state["batches_done"])  # validates
        self.epoch, self.batches_done = state["epoch"], state["batches_done"]

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
