"""Predictions in the official file formats, and their scores.

QVHighlights lines follow the official submission format: ``qid``, ``query``, ``vid``,
``pred_relevant_windows`` ([[start, end, score], ...] best first) and ``pred_saliency_scores`` (one per
2-second clip). Classification lines hold the item's key and its top-5 labels best first
(``{"key", "top_labels", "scores"}``, the format ``lamflow.train.tasks.classification_eval`` scores).
Captioning lines are ``{"vid", "caption"}`` (``lamflow eval captioning``), audio description lines
``{"ad_id", "caption"}`` (``lamflow eval ad``); the caption is the decoder's beam search / greedy output.
Each rank predicts its share of an "eval" loader; :func:`gather_predictions` merges them on every rank.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from lamflow.datasets.audio_description import AudioDescriptionTask
from lamflow.datasets.caption_text import decode_caption
from lamflow.datasets.captioning import CaptioningTask
from lamflow.datasets.qvhighlights_format import CLIP_SECONDS
from lamflow.fileio import write_jsonl_atomic
from lamflow.train.config import GENERATION_TASKS, DataConfig, ModelConfig
from lamflow.train.distributed import all_gather_objects, autocast, to_device
from lamflow.train.heads import decode_moments

TOP_K_CLASSES = 5
# The field that identifies a prediction line, per task (lines are merged and sorted by it).
ROW_KEYS = {"qvhighlights": "qid", "classification": "key", "captioning": CaptioningTask.prediction_field,
            "audio_description": AudioDescriptionTask.prediction_field}


def moment_rows(
    batch: dict[str, Any], outputs: dict[str, torch.Tensor], model: ModelConfig, queries: Mapping[int, Any]
) -> list[dict[str, Any]]:
    """Official QVHighlights lines. ``queries`` maps qid -> its annotation (``QVHighlightsQuery``): the
    evaluator checks vid (the annotated name, not the shard key), clip count and windows against it.
    A query whose view was cut to a window (data.window_seconds, e.g. MAD) has its windows in video time
    and a ``window`` field [start, end]: its ``pred_saliency_scores`` cover that window's 2-second clips."""
    annotations = [queries[int(qid)] for qid in batch["qids"]]
    # Each item saw [start, start + duration] of its video: all of it, or the window cut for its query
    # (data.window_seconds). Windows are decoded in that view and shifted back to video time.
    starts, durations = batch["window_starts"].tolist(), batch["query_durations"].tolist()
    duration = torch.tensor(durations, device=outputs["offsets"].device)
    clip_counts = [math.ceil(d / CLIP_SECONDS) for d in durations]
    windows, saliency = decode_moments(outputs, duration, clip_counts, model.num_windows, model.nms_iou)
    rows = []
    for a, start, view, item_windows, item_saliency in zip(annotations, starts, durations, windows, saliency):
        row = {"qid": a.qid, "query": a.query, "vid": a.vid,
               "pred_relevant_windows": [[round(s + start, 4), round(e + start, 4), score] for s, e, score in item_windows],
               "pred_saliency_scores": item_saliency}
        if view != a.duration:  # a cut view: its saliency scores are the 2-second clips of this window
            row["window"] = [round(start, 4), round(start + view, 4)]
        rows.append(row)
    return rows


def classification_rows(batch: dict[str, Any], outputs: dict[str, torch.Tensor], class_names: list[str]) -> list[dict[str, Any]]:
    probabilities = outputs["logits"].float().softmax(-1).cpu()
    top = probabilities.topk(min(TOP_K_CLASSES, probabilities.shape[-1]), dim=-1)
    return [
        # An output beyond the label file's classes (model.num_classes set larger) is named by its index.
        {"key": key, "top_labels": [class_names[i] if i < len(class_names) else str(i) for i in indices],
         "scores": [round(s, 6) for s in scores]}
        for key, scores, indices in zip(batch["label_keys"], top.values.tolist(), top.indices.tolist())
    ]


def caption_rows(batch: dict[str, Any], captions: list[list[int]], field: str) -> list[dict[str, Any]]:
    """``{field: the item's caption key, "caption": text}`` per item, from generated BPE ids."""
    return [{field: key, "caption": decode_caption(ids)} for key, ids in zip(batch["caption_keys"], captions)]


@torch.no_grad()
def predict(
    model: torch.nn.Module, loader: Iterable[dict], task_adapter: Any, data: DataConfig, model_config: ModelConfig,
    device: torch.device, amp: str, class_names: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Prediction lines for this rank's share of ``loader`` (use the unwrapped model: no collectives).

    ``class_names`` (classification) are the names of the model's outputs, as stored at training time.
    """
    queries = {q.qid: q for q in task_adapter.queries} if data.task == "qvhighlights" else {}
    was_training = model.training
    model.eval()
    rows: list[dict[str, Any]] = []
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device, amp):
            outputs = model.generate(batch) if data.task in GENERATION_TASKS else model(batch)
        if data.task == "qvhighlights":
            rows += moment_rows(batch, outputs, model_config, queries)
        elif data.task in GENERATION_TASKS:
            rows += caption_rows(batch, outputs, ROW_KEYS[data.task])
        else:
            rows += classification_rows(batch, outputs, class_names or [])
    model.train(was_training)
    return rows


def gather_predictions(rows: list[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    """Every rank's rows, one per query/item, in a stable order (qid, or the task's key: ``ROW_KEYS``)."""
    merged: dict[Any, dict[str, Any]] = {}
    for rank_rows in all_gather_objects(rows):
        for row in rank_rows:
            merged[row[ROW_KEYS[task]]] = row
    return [merged[k] for k in sorted(merged, key=str if task != "qvhighlights" else int)]


def score(rows: list[dict[str, Any]], data: DataConfig) -> dict[str, float]:
    """The official numbers of ``rows`` on the validation split, against the part of the ground truth the
    validation shards cover (the evaluators require a prediction for every ground-truth record).

    QVHighlights: the 14 ``brief`` metrics; MAD annotations: recall at IoU (``lamflow.train.tasks.mad_eval``, not
    MAD's full-movie protocol); classification: top-1 and top-5 accuracy; captioning and audio description:
    pycocoevalcap's BLEU-1..4, METEOR, ROUGE-L and CIDEr (SPICE when its models are present), with the
    references of the predicted videos (or ADs) only: CIDEr's IDF comes from them.
    """
    if data.task in GENERATION_TASKS:
        return _caption_metrics(rows, data)
    if data.task == "qvhighlights":
        from lamflow.datasets.qvhighlights import is_mad_file, load_queries
        from lamflow.fileio import read_jsonl
        from lamflow.train.tasks.qvhighlights_eval import evaluate

        if is_mad_file(data.val_annotations):  # no saliency and no QVHighlights evaluator: recall at IoU
            from lamflow.train.tasks.mad_eval import window_recall

            return window_recall(load_queries(data.val_annotations), rows)

        predicted = {row["qid"] for row in rows}
        ground_truth = [record for record in read_jsonl(data.val_annotations) if record.get("qid") in predicted]
        return evaluate(ground_truth, rows, gt_source=data.val_annotations)["brief"]
    from lamflow.datasets.classification import FOLDER_LABELS, folder_labels
    from lamflow.train.tasks.classification_eval import load_labels, ranked_accuracy

    predicted = {row["key"] for row in rows}
    truth = folder_labels(data.val_shards) if data.labels == FOLDER_LABELS else load_labels(data.labels)
    labels = {key: label for key, label in truth.items() if key in predicted}
    return ranked_accuracy(labels, rows)


def _caption_metrics(rows: list[dict[str, Any]], data: DataConfig) -> dict[str, float]:
    from lamflow.train.tasks.captioning_eval import caption_scores

    field = ROW_KEYS[data.task]
    predicted = {row[field]: row["caption"] for row in rows}
    if data.task == "audio_description":
        from lamflow.datasets.audio_description import load_ads

        references = {ad.ad_id: [ad.text] for ads in load_ads(data.val_captions).values() for ad in ads}
    else:
        from lamflow.train.tasks.captioning_eval import load_references

        references, _ = load_references(data.val_captions, data.val_caption_split)
    scores = caption_scores({key: references[key] for key in predicted}, predicted)
    return {name: value for name, value in scores.items() if value is not None}  # SPICE is None without its models


def predict_checkpoint(checkpoint: str | Path, split: str, out: str | Path, overrides: Iterable[str] = ()) -> Path:
    """Rebuild the model of ``checkpoint``, predict every item of ``split`` and write ``out`` (jsonl).

    ``overrides`` (``key=value``) change the stored config, e.g. ``data.val_shards=/other/shards``; a stored
    ``pipe:`` shard spec is refused unless an override replaces it (``checkpoint_config``).
    """
    from lamflow.train.build import build_loader, build_model, build_task, check_attention
    from lamflow.train.checkpoint import checkpoint_config, load_checkpoint
    from lamflow.train.distributed import process_group

    state = load_checkpoint(checkpoint)
    config = checkpoint_config(checkpoint, state, overrides)
    with process_group(config.run.device) as ctx:
        check_attention(config, ctx.device, training=False)
        task = build_task(config.data, split, mode="eval")
        model = build_model(config, state["input_dims"], state["num_classes"], state.get("vocabulary")).to(ctx.device)
        model.load_state_dict(state["model"])
        loader = build_loader(config, split, task, ctx.rank, ctx.world_size, mode="eval")
        rows = predict(model, loader, task, config.data, config.model, ctx.device, config.run.amp, state["class_names"])
        rows = gather_predictions(rows, config.data.task)
        if ctx.is_main:
            write_jsonl_atomic(out, rows)
        return Path(out)
