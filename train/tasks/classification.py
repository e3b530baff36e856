"""Task "classification": one label per video or image.

Options, the adapter (``lamflow.datasets.classification.ClassificationTask``), the head (class logits from
the mean of the non-padding tokens), cross-entropy, ranked-label prediction lines, top-k accuracy and
``lamflow eval classification``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lamflow.datasets.classification import FOLDER_LABELS, ClassificationTask, folder_labels
from lamflow.errors import ConfigError
from lamflow.train.typed_config import at_least
from lamflow.train.tasks.spec import Encoded, EvalCommand, HeadFacts, PredictionContext, TaskSpec

if TYPE_CHECKING:
    from lamflow.train.config import DataConfig, ModelConfig

# Labels written per prediction line, best first (top-5 accuracy needs five).
TOP_K_CLASSES = 5


@dataclass
class ClassificationDataOptions:
    # Classification label file (csv `key,label` or json {key: label}) covering train and val keys; or
    # "folder": each sample's label is the class folder of its recorded name (an image folder ROOT/CLASS/x.jpg
    # extracted from ROOT with `lamflow extract ROOT --media image`); train_shards and val_shards are then
    # separate extraction DIRs (e.g. of ImageNet's train/ and val/), and the classes are train_shards' folders.
    labels: str = ""


@dataclass
class ClassificationModelOptions:
    # Number of classes (task classification); auto = the number of label names in data.labels.
    num_classes: int | Literal["auto"] = "auto"


def validate_data(data: "DataConfig") -> None:
    if not data.labels:
        raise ConfigError("data.labels is required for task classification (csv key,label or json {key: label})")


def validate_model(model: "ModelConfig") -> None:
    if model.num_classes != "auto":
        at_least("model.num_classes", model.num_classes, 2)


def build_adapter(data: "DataConfig", split: str, shards: str, mode: str) -> Any:
    if data.labels == FOLDER_LABELS:
        return ClassificationTask.from_folders(shards, classes_from=data.train_shards)
    return ClassificationTask(data.labels)


def head_facts(model: "ModelConfig", adapter: Any) -> HeadFacts:
    class_names = list(adapter.class_names)
    num_classes = len(class_names) if model.num_classes == "auto" else int(model.num_classes)
    return HeadFacts(num_classes=num_classes, class_names=class_names)


class ClassificationHead(nn.Module):
    """Class logits from the mean of the non-padding tokens."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, hidden: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        keep = (~padding).unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return self.classifier(self.norm(pooled)).float()


def build_head(model: "ModelConfig", streams: Sequence[str], facts: HeadFacts) -> nn.Module:
    if not facts.num_classes:
        raise ValueError("task classification needs model.num_classes (or auto with a label file)")
    return ClassificationHead(model.encoder.dim, int(facts.num_classes))


def run_head(head: nn.Module, encoded: Encoded, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {"logits": head(encoded.hidden, encoded.padding)}


def classification_loss(outputs: dict[str, torch.Tensor], batch: dict[str, Any], config: "ModelConfig") -> dict[str, torch.Tensor]:
    """Cross-entropy of the class logits (config is unused: every task's loss takes the model options)."""
    return {"loss": F.cross_entropy(outputs["logits"], batch["labels"])}


def classification_rows(batch: dict[str, Any], outputs: dict[str, torch.Tensor], context: PredictionContext) -> list[dict[str, Any]]:
    """``{"key", "top_labels", "scores"}`` per item, the item's top-5 labels best first (the format
    ``classification_eval`` scores); class names are those stored with the model."""
    class_names = context.facts.class_names
    probabilities = outputs["logits"].float().softmax(-1).cpu()
    top = probabilities.topk(min(TOP_K_CLASSES, probabilities.shape[-1]), dim=-1)
    return [
        # An output beyond the label file's classes (model.num_classes set larger) is named by its index.
        {"key": key, "top_labels": [class_names[i] if i < len(class_names) else str(i) for i in indices],
         "scores": [round(s, 6) for s in scores]}
        for key, scores, indices in zip(batch["label_keys"], top.values.tolist(), top.indices.tolist())
    ]


def score(rows: list[dict[str, Any]], data: "DataConfig") -> dict[str, float]:
    """Top-1 and top-5 accuracy against the labels of the predicted keys."""
    from lamflow.train.tasks.classification_eval import load_labels, ranked_accuracy

    predicted = {row["key"] for row in rows}
    truth = folder_labels(data.val_shards) if data.labels == FOLDER_LABELS else load_labels(data.labels)
    return ranked_accuracy({key: label for key, label in truth.items() if key in predicted}, rows)


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", required=True, type=Path, metavar="LABELS",
                        help="CSV with key,label rows (optional header), a JSON object {key: label}, or the extraction "
                             "DIR of an image folder (lamflow extract ROOT --media image): labels = class folders")
    parser.add_argument("--pred", required=True, type=Path, metavar="PRED.jsonl",
                        help='JSONL lines {"key": ..., "top_labels": [...]}, labels best first')
    parser.add_argument("--topk", type=int, nargs="+", default=[1, 5], metavar="K",
                        help="which top-k accuracies to report (default: 1 5)")


def _evaluate_files(args: argparse.Namespace) -> dict:
    from lamflow.train.tasks.classification_eval import evaluate_files

    return evaluate_files(args.labels, args.pred, tuple(args.topk))


CLASSIFICATION = TaskSpec(
    name="classification",
    summary="one label per video or image (a label file, or an image folder's class folders)",
    data_options=ClassificationDataOptions,
    model_options=ClassificationModelOptions,
    validate_data=validate_data,
    validate_model=validate_model,
    build_adapter=build_adapter,
    head_facts=head_facts,
    build_head=build_head,
    run_head=run_head,
    loss=classification_loss,
    prediction_rows=classification_rows,
    prediction_key=ClassificationTask.prediction_field,
    score=score,
    headline_metrics=("top1", "top5"),
    eval_command=EvalCommand(
        name="classification",
        help="top-1 / top-5 accuracy of ranked label predictions",
        description=(
            "Top-k accuracy (percent, 2 decimals) of a JSONL prediction file whose lines are "
            '{"key": KEY, "top_labels": [best, second, ...]} against a label file (CSV key,label or '
            "JSON {key: label}), or against the class folders of an image folder's extraction DIR (each "
            "sample's label is the folder its recorded name CLASS/IMAGE starts with). Every labelled key "
            "needs exactly one prediction."
        ),
        add_arguments=_eval_arguments,
        evaluate=_evaluate_files,
    ),
)
