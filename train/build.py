"""Build the task adapter, loaders and model of a run from its TrainConfig (shared by train, predict and masks)."""
from __future__ import annotations

import dataclasses
import torch

from lamflow.contract import TEXT_STREAM
from lamflow.datasets.loader import StreamingLoader
from lamflow.datasets.task import Task
from lamflow.errors import ConfigError
from lamflow.lam.attention import flex_unavailable_reason
from lamflow.train.config import DataConfig, TrainConfig
from lamflow.train.model import MultimodalLAMModel
from lamflow.train.tasks import get_task
from lamflow.train.tasks.spec import HeadFacts

SPLITS = ("train", "val")


def build_adapter(data: DataConfig, split: str, mode: str = "train") -> Task:
    """The task's datasets/ adapter joining ``split``'s annotations (or the label file) to the shards by key;
    ``mode`` is the loader's ("eval": e.g. one captioning item per video instead of one per caption)."""
    return get_task(data.task).build_adapter(data, split, split_shards(data, split), mode)


def split_shards(data: DataConfig, split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    shards = data.train_shards if split == "train" else data.val_shards
    if not shards:
        raise ConfigError(f"data.{split}_shards is empty: set it to an extraction output DIR or a .tar pattern")
    return shards


def build_loader(
    config: TrainConfig, split: str, task: Task, rank: int = 0, world_size: int = 1, mode: str = "train"
) -> StreamingLoader:
    """A StreamingLoader over ``split``'s shards; mode "train" shuffles and equalises ranks, "eval" reads
    every item exactly once over all ranks (with data.eval_batch_size items per batch)."""
    loader_config = config.data.loader
    if mode == "eval":
        loader_config = dataclasses.replace(loader_config, batch_size=config.data.eval_batch_size,
                                            bucket_buffer=max(loader_config.bucket_buffer, config.data.eval_batch_size))
    return StreamingLoader(split_shards(config.data, split), task, loader_config, seed=config.run.seed,
                           rank=rank, world_size=world_size, mode=mode)


def resolve_input_dims(config: TrainConfig, loader: StreamingLoader) -> dict[str, int]:
    """model.input_dims, or the feature widths the training shards record when it is "auto"."""
    if config.model.input_dims != "auto":
        return dict(config.model.input_dims)
    streams = config.data.loader.streams
    widths = dict(loader.stream_dims)
    store = loader.task.text_store
    if TEXT_STREAM not in widths and store is not None:  # query tokens from data.train_texts
        widths[TEXT_STREAM] = store.width
    unknown = [name for name in streams if name not in widths]
    if unknown:
        raise ConfigError(
            f"model.input_dims is auto but the shards of data.train_shards ({config.data.train_shards}) do not say the "
            f"feature width of stream(s) {unknown}; set model.input_dims, e.g. {{{unknown[0]}: 512}}"
        )
    return {name: widths[name] for name in streams}


def head_facts(config: TrainConfig, train_adapter: Task) -> HeadFacts:
    """What the task's head is built from that the training data decides (class names, caption vocabulary)."""
    return get_task(config.data.task).head_facts(config.model, train_adapter)


def check_attention(config: TrainConfig, device: torch.device, training: bool) -> None:
    """model.encoder.attention=flex where it cannot run (training on CPU: no FlexAttention backward there)
    is a ConfigError before any data is read, not a traceback at the first forward pass."""
    encoder = config.model.encoder
    if encoder.mask == "none" or encoder.attention != "flex":
        return  # vanilla attention never takes the flex path; "auto" picks one that runs
    reason = flex_unavailable_reason(device, needs_grad=training)
    if reason:
        raise ConfigError(f"model.encoder.attention=flex cannot {'train' if training else 'run'} on {device}: {reason}")


def build_model(config: TrainConfig, input_dims: dict[str, int], facts: HeadFacts = HeadFacts()) -> MultimodalLAMModel:
    return MultimodalLAMModel(config.model, input_dims, config.data.loader.streams, config.data.task, facts)
