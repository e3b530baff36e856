"""The training loop, top to bottom: setup, (resume), then steps of accumulate -> clip -> update -> log ->
checkpoint -> evaluate.

The same code runs as one process (``lamflow train cfg.yaml``) and under ``torchrun --nproc_per_node N``
(DDP: gloo on CPU, NCCL on GPU). Resuming restores the model, optimizer, scheduler, loader position and
every rank's RNG states, so a resumed run reproduces the loss values the uninterrupted run would have
logged (exactly, on CPU).

One command serves the first submission of a cluster job and every requeue: a run directory with
checkpoints of the same config is resumed, one without starts at step 0 (see checkpoint.py for what
"same config" allows). SIGTERM and SIGUSR1 (scancel, requeue, preemption, a walltime warning) stop every
rank within one micro-batch or validation batch, with a checkpoint of the last finished step: torchrun
kills its workers 30 s after forwarding the signal, so neither a long step nor a validation pass is waited
for; the next attempt loses no finished step and runs none twice.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from lamflow.datasets.token_rates import check_same_rates
from lamflow.errors import LamflowError
from lamflow.fileio import write_jsonl_atomic
from lamflow.train.build import build_adapter, build_loader, build_model, check_attention, head_facts, resolve_input_dims
from lamflow.train.checkpoint import (
    DIVERGED_SUFFIX,
    ResumeError,
    capture_rng_state,
    checkpoint_path,
    checkpoint_step,
    find_resume_checkpoint,
    list_checkpoints,
    restore_rng_state,
    save_checkpoint,
    set_aside,
)
from lamflow.train.config import TrainConfig, config_to_dict
from lamflow.train.distributed import (
    DistContext,
    all_gather_objects,
    any_over_ranks,
    autocast,
    barrier,
    mean_over_ranks,
    process_group,
    sum_over_ranks,
    to_device,
)
from lamflow.train.predict import gather_predictions, predict, score
from lamflow.train.run_log import RunLog, read_metrics
from lamflow.train.schedule import build_scheduler, resume_scheduler
from lamflow.train.tasks import get_task

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

# Loader counters written to metrics.jsonl (summed over ranks): data that was read but never trained on.
SKIP_COUNTERS = ("skipped_corrupt", "skipped_width", "skipped_empty", "read_errors", "missing_samples")


class TrainingDiverged(LamflowError, RuntimeError):
    """The gradients stayed NaN/inf for run.max_nonfinite_steps steps in a row, or an update made the weights
    NaN/inf (they are never checkpointed)."""


def train(config: TrainConfig, require_checkpoint: bool = False) -> dict[str, Any]:
    """Run ``config`` to ``optim.max_steps``, continuing from the newest checkpoint of ``run.out_dir`` when
    it has one (``require_checkpoint``: when it has none, raise instead of starting at step 0).

    Returns the last logged training and validation records (rank 0; {} elsewhere); a run stopped by
    SIGTERM/SIGUSR1 (after saving a checkpoint) also returns ``{"stopped_by": "SIGTERM"}`` on every rank.
    """
    with process_group(config.run.device) as ctx, _StopRequest() as stop:
        return _train(config, require_checkpoint, ctx, stop)


class _StopRequest:
    """Turns the STOP_SIGNALS into a flag that the ranks vote on before every micro-batch and validation
    batch (a signal must not interrupt a backward pass or a checkpoint write half way, and every rank must
    stop at the same point: what follows, a checkpoint, is a collective). Installed for the duration of one
    ``train`` call."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self.stopped = False  # the ranks agreed to stop: the same on every rank, and final
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():  # the only thread allowed to install handlers
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *_: Any) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, _frame: Any) -> None:
        self.signal = self.signal or signal.Signals(number)

    def agreed(self) -> bool:
        """True on every rank once any rank got a stop signal. A collective every rank calls at the same
        point, until it returns True (from then on it answers without one)."""
        return self._vote(busy=False)[0]

    def batches(self, loader: Iterable[dict]) -> Iterator[dict]:
        """``loader``'s batches until every rank has run out, or the ranks agree to stop (then
        :attr:`stopped` is True). Validation gives ranks different numbers of batches, so a rank that
        has run out keeps voting until the others are done too."""
        pending = iter(loader)
        while not self.stopped:
            batch = next(pending, None)
            stop, busy = self._vote(busy=batch is not None)
            if stop or not busy:
                return
            if batch is not None:
                yield batch

    def _vote(self, busy: bool) -> tuple[bool, bool]:
        if self.stopped:
            return True, busy
        self.stopped, busy = any_over_ranks([self.signal is not None, busy])
        return self.stopped, busy


def _train(config: TrainConfig, require_checkpoint: bool, ctx: DistContext, stop: _StopRequest) -> dict[str, Any]:
    run, optim = config.run, config.optim
    out_dir = Path(run.out_dir)
    checkpoints = out_dir / "checkpoints"
    # One intra-op thread pool per process must not oversubscribe the node's cores.
    torch.set_num_threads(run.threads or max(1, len(os.sched_getaffinity(0)) // ctx.local_world_size))
    _seed_everything(run.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
    check_attention(config, ctx.device, training=True)

    # ---- data and model
    train_adapter = build_adapter(config.data, "train")
    train_loader = build_loader(config, "train", train_adapter, ctx.rank, ctx.world_size, mode="train")
    input_dims = resolve_input_dims(config, train_loader)
    facts = head_facts(config, train_adapter)
    model = build_model(config, input_dims, facts).to(ctx.device)
    val_adapter = build_adapter(config.data, "val", mode="eval") if config.data.val_shards else None
    val_loader = build_loader(config, "val", val_adapter, ctx.rank, ctx.world_size, mode="eval") if val_adapter else None
    if val_loader is not None:  # a model trained on 1-fps tokens and scored on 2-fps ones scores garbage
        check_same_rates(train_loader, val_loader)
    compute_loss = get_task(config.data.task).loss

    # Weight decay on matrices only: decaying norms and biases hurts and buys nothing.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=optim.lr, betas=optim.betas, fused=ctx.device.type == "cuda",
    )
    scheduler = build_scheduler(optimizer, optim.warmup_steps, optim.max_steps, optim.min_lr_ratio)

    # ---- resume: the run in out_dir continues if it has a checkpoint; every rank reads the same one
    step = 0
    point = find_resume_checkpoint(checkpoints, config_to_dict(config), map_location=ctx.device)
    if point.path is None and require_checkpoint:
        raise ResumeError(f"--resume: no checkpoint in {checkpoints} to continue from; run without --resume to "
                          "start at step 0 (a run directory with checkpoints is continued either way)")
    barrier()  # every rank has read the checkpoints before rank 0 renames the unreadable ones
    if ctx.is_main:
        for path, reason in point.unreadable:
            log.warning("%s; resuming from %s instead (the bad file is kept as %s)", reason, point.path.name,
                        set_aside(path).name)
    run_log = RunLog(out_dir) if ctx.is_main else None
    if point.path is not None:
        path, state = point.path, point.state
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        resume_scheduler(scheduler, state["scheduler"], optim.lr)
        train_loader.load_state_dict(state["loader"])
        step = int(state["step"])
        if len(state["rng"]) == ctx.world_size:
            restore_rng_state(state["rng"][ctx.rank])
        else:  # another world size: the loss curve continues, but not bit for bit
            log.warning("resuming %d-rank RNG states on %d ranks: reseeding", len(state["rng"]), ctx.world_size)
            _seed_everything(run.seed + 1000 * step + ctx.rank)
        state.clear()  # the loaded copies of the weights and optimizer state are not needed twice
        if ctx.is_main:
            log.info("resumed from %s at step %d", path, step)
    else:
        _seed_everything(run.seed + ctx.rank)  # distinct dropout per rank, reproducible per run
        if run_log and run_log.path.exists() and run_log.path.stat().st_size:
            log.warning("%s holds metrics of an attempt that stopped before its first checkpoint: starting again "
                        "at step 0 replaces them", run_log.path)
    if run_log:
        run_log.truncate_after(step)  # lines logged after the checkpoint would repeat: one curve per run
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")

    if ctx.distributed:
        ddp_model = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    else:
        ddp_model = model
    batches = _endless(train_loader)
    progress = tqdm(total=optim.max_steps, initial=step, disable=not (ctx.is_main and run.progress), unit="step", dynamic_ncols=True)
    last: dict[str, Any] = {}
    saved_step = step if point.path is not None else None

    def position() -> dict[str, Any]:
        """Where the next step starts: the loader position, this rank's RNG states, and the model's buffers
        (running statistics, which every forward pass updates). A step dropped half way is undone to here,
        so a checkpoint of the last finished step lets the next attempt continue exactly."""
        return {"loader": train_loader.state_dict(), "rng": capture_rng_state(),
                "buffers": [buffer.detach().clone() for buffer in model.buffers()]}

    def save(at: dict[str, Any]) -> None:
        nonlocal saved_step
        # Every rank's RNG is gathered (a collective: all ranks call save at the same step).
        rng_states = all_gather_objects(at["rng"])
        if ctx.is_main:
            save_checkpoint(checkpoints, step, {
                "step": step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                # The schedule's shape (warm-up, max_steps) and peak learning rate come from the resumed
                # run's config (see resume_scheduler); only the position (last_epoch) is restored.
                "scheduler": {**scheduler.state_dict(), "lr_lambdas": [None]},
                "loader": at["loader"],
                "rng": rng_states,
                "config": config_to_dict(config),
                "input_dims": input_dims,
                **facts.to_state(),
            }, keep_last=run.keep_checkpoints)
        saved_step = step
        barrier()

    def evaluate() -> None:
        """Score the validation split at ``step``; abandoned (nothing written) when the ranks agree to stop."""
        rows = predict(model, stop.batches(val_loader), val_adapter, config.data, config.model, ctx.device, run.amp,
                       facts)
        if stop.stopped:
            return
        rows = gather_predictions(rows, config.data.task)
        if ctx.is_main:
            write_jsonl_atomic(predictions_file(out_dir, step), rows)
            record = {"step": step, "split": "val", "items": len(rows), **score(rows, config.data)}
            run_log.write(record)
            last["val"] = record
        barrier()

    def evaluation_due() -> bool:
        return val_loader is not None and step > 0 and (
            step == optim.max_steps or bool(run.eval_every and step % run.eval_every == 0))

    def diverged(problem: str, bad_from: int) -> TrainingDiverged:
        """The error that stops a diverged run whose weights went bad with step ``bad_from``'s. Rank 0 sets
        aside the checkpoints holding them, so that the advice can be followed: the same command, with a
        field changed that may change on resume (checkpoint.RESUMABLE_FIELDS), continues from one before."""
        found = list_checkpoints(checkpoints)
        good = [path for path in found if checkpoint_step(path) < bad_from]
        if ctx.is_main:
            for path in found[len(good):]:
                set_aside(path, DIVERGED_SUFFIX)
        since = (f"it continues from {good[-1].name}, the newest checkpoint from before" if good else
                 "it starts again at step 0, as no checkpoint was saved before")
        kept = f" (the later ones are renamed *{DIVERGED_SUFFIX})" if len(good) < len(found) else ""
        return TrainingDiverged(f"{problem}: training diverged. Lower optim.lr, raise optim.warmup_steps or set "
                                f"run.amp=off, and run the same command with that change: {since}{kept}")

    def accumulate() -> tuple[dict[str, torch.Tensor], int] | None:
        """One step's gradients over grad_accum micro-batches: the mean loss terms and the samples seen;
        None when the ranks agree to stop first (they vote before each micro-batch: a long step is not
        waited for)."""
        terms_sum: dict[str, torch.Tensor] = {}
        samples = 0
        for micro in range(optim.grad_accum):
            if stop.agreed():
                return None
            batch = to_device(next(batches), ctx.device)
            samples += len(batch["sample_ids"])
            # DDP all-reduces gradients on every backward unless told not to: sync on the last micro-batch only.
            last_micro = micro == optim.grad_accum - 1
            sync = contextlib.nullcontext() if last_micro or not ctx.distributed else ddp_model.no_sync()
            with sync:
                with autocast(ctx.device, run.amp):
                    terms = compute_loss(ddp_model(batch), batch, config.model)
                (terms["loss"] / optim.grad_accum).backward()
            for name, value in terms.items():
                terms_sum[name] = terms_sum.get(name, 0.0) + value.detach().float() / optim.grad_accum
        return terms_sum, samples

    # ---- the loop: one iteration = one optimizer step over grad_accum micro-batches
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    nonfinite_steps = nonfinite_in_a_row = 0
    if evaluation_due() and not predictions_file(out_dir, step).exists():
        evaluate()  # resumed from a checkpoint whose evaluation did not finish (stopped, or killed after the save)
    next_step = position()
    while step < optim.max_steps:
        started = time.perf_counter()
        accumulated = accumulate()
        if accumulated is None:  # the unfinished step is dropped: the next attempt runs it whole
            optimizer.zero_grad(set_to_none=True)
            for buffer, before in zip(model.buffers(), next_step["buffers"]):
                buffer.copy_(before)
            break
        terms_sum, samples = accumulated
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, optim.grad_clip or float("inf"))
        lr = scheduler.get_last_lr()[0]
        # NaN/inf gradients never reach the weights: the step is skipped and counted (DDP has averaged the
        # gradients, so every rank sees the same norm and skips together); a run that keeps producing them
        # has diverged and stops with an error instead of training on garbage.
        if torch.isfinite(grad_norm):
            optimizer.step()
            nonfinite_in_a_row = 0
            # A finite but huge update can still overflow the weights: stop before they reach a checkpoint.
            if not torch.isfinite(torch.nn.utils.get_total_norm(parameters, norm_type=float("inf"))):
                raise diverged(f"the update of step {step + 1} (gradient norm {float(grad_norm):.3g}, learning rate "
                               f"{lr:.3g}) made the weights NaN/inf", bad_from=step + 1)
        else:
            nonfinite_steps += 1
            nonfinite_in_a_row += 1
            log.warning("step %d: gradient norm is %s; the update is skipped", step + 1, float(grad_norm))
            if nonfinite_in_a_row >= run.max_nonfinite_steps:
                # The weights that gave them are those after the last step before the streak, still unchanged.
                raise diverged(f"the gradients were NaN/inf in {nonfinite_in_a_row} steps in a row (up to step {step + 1}); "
                               "the inputs are checked for non-finite values", bad_from=step + 1 - nonfinite_in_a_row)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        next_step = position()

        elapsed = time.perf_counter() - started
        samples_per_s = samples * ctx.world_size / elapsed
        progress.update(1)
        if not progress.disable:  # .item() waits for the GPU: only pay for it when a bar is shown
            progress.set_postfix(loss=f"{terms_sum['loss'].item():.4f}", samples_s=f"{samples_per_s:.1f}")
        if run.log_every and (step % run.log_every == 0 or step == optim.max_steps):
            names = sorted(terms_sum)
            values = mean_over_ranks(torch.stack([terms_sum[n] for n in names])).tolist()
            skipped = sum_over_ranks({name: train_loader.stats[name] for name in SKIP_COUNTERS})
            if ctx.is_main:
                record = {"step": step, "split": "train", **dict(zip(names, values)), "lr": lr,
                          "grad_norm": float(grad_norm), "samples_per_s": samples_per_s,
                          "epoch": train_loader.epoch, "nonfinite_steps": nonfinite_steps, **skipped}
                run_log.write(record)
                last["train"] = record
        if step == optim.max_steps or (run.checkpoint_every and step % run.checkpoint_every == 0):
            save(next_step)
        if evaluation_due():
            evaluate()
    if stop.stopped:
        if saved_step != step:
            save(next_step)
        last["stopped_by"] = stop.signal.name if stop.signal else "a signal to another rank"
        if ctx.is_main:
            log.warning("stopped by %s at step %d: %s saved; run the same command to continue",
                        last["stopped_by"], step, checkpoint_path(checkpoints, step).name)
    progress.close()
    if run_log:
        if "train" not in last and run_log.path.exists():  # nothing left to train: the run's last records
            for record in read_metrics(run_log.path):
                last[record["split"]] = record
        run_log.close()
    return last


def predictions_file(out_dir: Path, step: int) -> Path:
    """The validation predictions a run wrote at ``step`` (the demo scores these files with `lamflow eval`)."""
    return out_dir / "predictions" / f"val-step-{step:08d}.jsonl"


def _endless(loader: Any) -> Iterator[dict]:
    """Batches across epochs: the loader moves to the next epoch at the end of one, and resumes mid-epoch
    after ``load_state_dict``."""
    while True:
        yield from loader


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
