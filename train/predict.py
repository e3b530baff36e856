"""Predictions in the official file formats, and their scores.

Each task writes its own lines (``TaskSpec.prediction_rows``): QVHighlights submission lines, ranked
labels, ``{"vid", "caption"}`` or ``{"ad_id", "caption"}`` captions (see the task modules in
``lamflow.train.tasks``). Each rank predicts its share of an "eval" loader; :func:`gather_predictions`
merges them on every rank.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch

from lamflow.datasets.task import Task
from lamflow.fileio import write_jsonl_atomic
from lamflow.train.config import DataConfig, ModelConfig
from lamflow.train.distributed import all_gather_objects, autocast, to_device
from lamflow.train.tasks import get_task
from lamflow.train.tasks.spec import HeadFacts, PredictionContext


@torch.no_grad()
def predict(
    model: torch.nn.Module, loader: Iterable[dict], adapter: Task, data: DataConfig, model_config: ModelConfig,
    device: torch.device, amp: str, facts: HeadFacts = HeadFacts(),
) -> list[dict[str, Any]]:
    """Prediction lines for this rank's share of ``loader`` (use the unwrapped model: no collectives).

    ``facts`` are the head's, as stored at training time (e.g. the names of the class outputs).
    """
    spec = get_task(data.task)
    context = PredictionContext(adapter, model_config, facts)
    was_training = model.training
    model.eval()
    rows: list[dict[str, Any]] = []
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device, amp):
            outputs = model.generate(batch) if spec.generate is not None else model(batch)
        rows += spec.prediction_rows(batch, outputs, context)
    model.train(was_training)
    return rows


def gather_predictions(rows: list[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    """Every rank's rows, one per query/item, in a stable order (by the task's prediction key)."""
    spec = get_task(task)
    merged: dict[Any, dict[str, Any]] = {}
    for rank_rows in all_gather_objects(rows):
        for row in rank_rows:
            merged[row[spec.prediction_key]] = row
    return [merged[k] for k in sorted(merged, key=spec.key_order)]


def score(rows: list[dict[str, Any]], data: DataConfig) -> dict[str, float]:
    """The official numbers of ``rows`` on the validation split, against the part of the ground truth the
    validation shards cover (the evaluators require a prediction for every ground-truth record); each task
    says which (``TaskSpec.score``)."""
    return get_task(data.task).score(rows, data)


def predict_checkpoint(checkpoint: str | Path, split: str, out: str | Path, overrides: Iterable[str] = ()) -> Path:
    """Rebuild the model of ``checkpoint``, predict every item of ``split`` and write ``out`` (jsonl).

    ``overrides`` (``key=value``) change the stored config, e.g. ``data.val_shards=/other/shards``; a stored
    ``pipe:`` shard spec is refused unless an override replaces it (``checkpoint_config``).
    """
    from lamflow.train.build import build_adapter, build_loader, build_model, check_attention
    from lamflow.train.checkpoint import checkpoint_config, load_checkpoint
    from lamflow.train.distributed import process_group

    state = load_checkpoint(checkpoint)
    config = checkpoint_config(checkpoint, state, overrides)
    with process_group(config.run.device) as ctx:
        check_attention(config, ctx.device, training=False)
        adapter = build_adapter(config.data, split, mode="eval")
        facts = HeadFacts.from_state(state)
        model = build_model(config, state["input_dims"], facts).to(ctx.device)
        model.load_state_dict(state["model"])
        loader = build_loader(config, split, adapter, ctx.rank, ctx.world_size, mode="eval")
        rows = predict(model, loader, adapter, config.data, config.model, ctx.device, config.run.amp, facts)
        rows = gather_predictions(rows, config.data.task)
        if ctx.is_main:
            write_jsonl_atomic(out, rows)
        return Path(out)
