"""TaskSpec: everything the trainer, ``lamflow predict``, ``lamflow eval`` and the reports need from one task,
named in one object (as torchtitan's ``TrainSpec`` names a model's builders).

A task module (``lamflow.train.tasks.<task>``) defines its options dataclasses, builds its datasets/ adapter
and its head, computes its loss, turns outputs into the lines of its official prediction format, scores them
and declares its ``lamflow eval`` subcommand; the registry (``lamflow.train.tasks``) lists the specs. The code
outside the task modules asks the spec and never compares task names.

Options: ``data_options`` and ``model_options`` are dataclasses whose fields become fields of ``data.*`` and
``model.*`` (``DataConfig`` and ``ModelConfig`` inherit them), so a config keeps its flat keys
(``data.train_annotations``) while each field is declared by the task that reads it. Tasks may share an
options class (captioning and audio description share the caption fields).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

if TYPE_CHECKING:  # annotations only: the config module imports the registry
    from lamflow.datasets.task import Task
    from lamflow.train.config import DataConfig, ModelConfig


@dataclass(frozen=True)
class HeadFacts:
    """What the head is built from that the training data decides (stored in every checkpoint, so predict
    rebuilds the same head): the class names of a label file, the BPE ids a caption decoder reads and writes."""

    num_classes: int | None = None
    class_names: list[str] = field(default_factory=list)
    vocabulary: list[int] | None = None

    def to_state(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "class_names": list(self.class_names), "vocabulary": self.vocabulary}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "HeadFacts":
        """The facts a checkpoint stored (checkpoints older than the caption tasks have no vocabulary)."""
        return cls(state.get("num_classes"), list(state.get("class_names") or []), state.get("vocabulary"))


@dataclass(frozen=True)
class Encoded:
    """The LAM encoder's output for a batch: hidden states (B, L, dim), padding and token times (B, L), and
    where each input stream sits in the sequence."""

    hidden: torch.Tensor
    padding: torch.Tensor
    times: torch.Tensor
    spans: dict[str, slice]


@dataclass(frozen=True)
class PredictionContext:
    """What turning outputs into prediction lines may read besides the batch: the split's adapter, the model
    options (e.g. windows per query) and the head facts (e.g. the names of the class outputs)."""

    adapter: "Task"
    model: "ModelConfig"
    facts: HeadFacts


@dataclass(frozen=True)
class EvalCommand:
    """``lamflow eval <name>``: its help, its arguments, and the scoring it runs. ``evaluate(args)`` returns
    the JSON object to print and raises a LamflowError for input it cannot score; ``note(result)`` is an
    optional line for stderr."""

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    evaluate: Callable[[argparse.Namespace], dict]
    note: Callable[[dict], str | None] = lambda result: None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    # One line: what the task learns (config docs, `lamflow eval` help).
    summary: str
    data_options: type
    model_options: type
    # Checks of the data options and their combination with the streams, once the task is chosen (ConfigError).
    validate_data: Callable[["DataConfig"], None]
    validate_model: Callable[["ModelConfig"], None]
    # The datasets/ adapter of a split: build_adapter(data, split, shards, mode); mode "eval" reads every item once.
    build_adapter: Callable[["DataConfig", str, str, str], "Task"]
    # The head's facts from the training adapter and the model options (model.num_classes=auto: the labels').
    head_facts: Callable[["ModelConfig", "Task"], HeadFacts]
    # build_head(model options, streams, facts): raises ValueError when the streams or facts cannot serve it.
    build_head: Callable[["ModelConfig", Sequence[str], HeadFacts], nn.Module]
    # run_head(head, encoded, batch) -> the outputs the loss and the prediction lines read.
    run_head: Callable[[nn.Module, Encoded, dict[str, Any]], Any]
    loss: Callable[[Any, dict[str, Any], "ModelConfig"], dict[str, torch.Tensor]]
    # Lines of the official prediction format for a batch's outputs (those of ``generate`` when it is set).
    prediction_rows: Callable[[dict[str, Any], Any, PredictionContext], list[dict[str, Any]]]
    # The field that identifies a prediction line; lines are merged over ranks and sorted by it.
    prediction_key: str
    # The official numbers of the validation split's lines (data.val_*: the ground truth).
    score: Callable[[list[dict[str, Any]], "DataConfig"], dict[str, float]]
    # The metrics tables and plots show by default, the main one first (every metric is recorded).
    headline_metrics: tuple[str, ...]
    eval_command: EvalCommand
    # generate(head, encoded, model options): what prediction lines are read from instead of one forward
    # pass (the caption tasks' beam search); None = the forward pass's outputs.
    generate: Callable[[nn.Module, Encoded, "ModelConfig"], Any] | None = None
    # Sort order of prediction keys (qids are integers).
    key_order: Callable[[Any], Any] = str
