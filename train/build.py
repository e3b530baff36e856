"""Build the task adapter, loaders and model of a run from its TrainConfig (shared by train and predict)."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch

from lamflow.contract import TEXT_STREAM
from lamflow.datasets.loader import StreamingLoader
from lamflow.datasets.texts import TextStore
from lamflow.errors import ConfigError
from lamflow.lam.attention import flex_unavailable_reason
from lamflow.train.config import GENERATION_TASKS, DataConfig, TrainConfig
from lamflow.train.model import MultimodalLAMModel

SPLITS = ("train", "val")


def build_task(data: DataConfig, split: str, mode: str = "train") -> Any:
    """The task adapter joining ``split``'s annotations (or the label file) to the shards by key; ``mode``
    is the loader's ("eval": one captioning item per video instead of one per caption)."""
    if data.task == "classification":
        from lamflow.datasets.classification import FOLDER_LABELS, ClassificationTask

        if data.labels == FOLDER_LABELS:
            return ClassificationTask.from_folders(split_shards(data, split), classes_from=split_shards(data, "train"))
        return ClassificationTask(data.labels)
    if data.task in GENERATION_TASKS:
        captions = data.train_captions if split == "train" else data.val_captions
        if not captions:
            raise ConfigError(f"data.{split}_captions is required to read the {split} split of task {data.task}")
        if data.task == "audio_description":
            from lamflow.datasets.audio_description import AudioDescriptionTask

            return AudioDescriptionTask(captions, data.ad_context_before, data.ad_context_after)
        from lamflow.datasets.captioning import CaptioningTask

        caption_split = data.train_caption_split if split == "train" else data.val_caption_split
        return CaptioningTask(captions, caption_split, per_caption=mode == "train")
    from lamflow.datasets.qvhighlights import QVHighlightsTask

    annotations = data.train_annotations if split == "train" else data.val_annotations
    if not annotations:
        raise ConfigError(f"data.{split}_annotations is required to read the {split} split of task qvhighlights")
    texts = data.train_texts if split == "train" else data.val_texts
    # Training draws a window position per epoch; validation sees the same windows every time.
    return QVHighlightsTask(annotations, text_store=text_store(texts) if texts else None,
                            window_seconds=data.window_seconds, placement="random" if split == "train" else "fixed")


@functools.lru_cache(maxsize=4)
def text_store(spec: str) -> TextStore:
    """The TextStore of ``spec``, indexed once per process: train and val usually share one text shard set,
    and indexing reads every tar header of it (the store holds no open file, so sharing it is safe)."""
    return TextStore(spec)


def split_shards(data: DataConfig, split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    shards = data.train_shards if split == "train" else data.val_shards
    if not shards:
        raise ConfigError(f"data.{split}_shards is empty: set it to an extraction output DIR or a .tar pattern")
    return shards


def build_loader(
    config: TrainConfig, split: str, task: Any, rank: int = 0, world_size: int = 1, mode: str = "train"
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
    store = getattr(loader.task, "text_store", None)
    if TEXT_STREAM not in widths and store is not None:  # query tokens from data.train_texts
        widths[TEXT_STREAM] = store.width
    unknown = [name for name in streams if name not in widths]
    if unknown:
        raise ConfigError(
            f"model.input_dims is auto but the shards of data.train_shards ({config.data.train_shards}) do not say the "
            f"feature width of stream(s) {unknown}; set model.input_dims, e.g. {{{unknown[0]}: 512}}"
        )
    return {name: widths[name] for name in streams}


def resolve_num_classes(config: TrainConfig, task: Any) -> int | None:
    """model.num_classes, or the number of class names in the label file when it is "auto"."""
    if config.data.task != "classification":
        return None
    if config.model.num_classes != "auto":
        return int(config.model.num_classes)
    return len(task.class_names)


def resolve_vocabulary(config: TrainConfig, task: Any) -> list[int] | None:
    """The caption decoder's BPE ids (generation tasks): those of the training captions with
    model.caption_vocabulary "train", every id with "full"; None for the other tasks."""
    if config.data.task not in GENERATION_TASKS:
        return None
    from lamflow.datasets.caption_text import end_id, start_id, vocabulary_size

    if config.model.caption_vocabulary == "full":
        return list(range(vocabulary_size()))
    return sorted(task.token_ids() | {start_id(), end_id()})


def check_attention(config: TrainConfig, device: torch.device, training: bool) -> None:
    """model.encoder.attention=flex where it cannot run (training on CPU: no FlexAttention backward there)
    is a ConfigError before any data is read, not a traceback at the first forward pass."""
    encoder = config.model.encoder
    if encoder.mask == "none" or encoder.attention != "flex":
        return  # vanilla attention never takes the flex path; "auto" picks one that runs
    reason = flex_unavailable_reason(device, needs_grad=training)
    if reason:
        raise ConfigError(f"model.encoder.attention=flex cannot {'train' if training else 'run'} on {device}: {reason}")


def build_model(config: TrainConfig, input_dims: dict[str, int], num_classes: int | None,
                vocabulary: list[int] | None = None) -> MultimodalLAMModel:
    return MultimodalLAMModel(config.model, input_dims, config.data.loader.streams, config.data.task, num_classes,
                              vocabulary)
