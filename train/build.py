"""Build the task adapter, loaders and model of a run from its TrainConfig (shared by train and predict)."""
from __future__ import annotations

from typing import Any

from lamflow.datasets.loader import LoaderConfig, StreamingLoader
from lamflow.train.config import ConfigError, DataConfig, TrainConfig
from lamflow.train.model import MultimodalLAMModel, infer_input_dims

SPLITS = ("train", "val")


def build_task(data: DataConfig, split: str) -> Any:
    """The task adapter joining ``split``'s annotations (or the label file) to the shards by key."""
    if data.task == "classification":
        from lamflow.datasets.classification import ClassificationTask

        return ClassificationTask(data.labels)
    from lamflow.datasets.qvhighlights import QVHighlightsTask

    annotations = data.train_annotations if split == "train" else data.val_annotations
    if not annotations:
        raise ConfigError(f"data.{split}_annotations is required to read the {split} split of task qvhighlights")
    return QVHighlightsTask(annotations)


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
    every item exactly once over all ranks."""
    data = config.data
    loader_config = LoaderConfig(
        shards=split_shards(data, split),
        streams=tuple(data.streams),
        batch_size=data.batch_size if mode == "train" else data.eval_batch_size,
        num_workers=data.num_workers,
        shuffle_buffer=data.shuffle_buffer,
        seed=config.run.seed,
        samples_per_epoch=data.samples_per_epoch if mode == "train" else None,
        bucket_by_length=data.bucket_by_length,
        bucket_buffer=data.bucket_buffer,
        max_stream_tokens=data.max_stream_tokens,
    )
    return StreamingLoader(loader_config, task, rank=rank, world_size=world_size, mode=mode)


def resolve_input_dims(config: TrainConfig, task: Any) -> dict[str, int]:
    """model.input_dims, read from the first training batch when it is "auto"."""
    if config.model.input_dims != "auto":
        return dict(config.model.input_dims)
    # A one-process eval loader: every rank reads the same first batch, whatever its share of the data.
    probe = build_loader(config, "train", task, mode="eval")
    for batch in probe:
        return infer_input_dims(batch, config.data.streams)
    raise ConfigError(
        f"model.input_dims is auto but data.train_shards ({config.data.train_shards}) yields no item for task "
        f"{config.data.task}: check that the annotations/labels name the videos in the shards"
    )


def resolve_num_classes(config: TrainConfig, task: Any) -> int | None:
    """model.num_classes, or the number of class names in the label file when it is "auto"."""
    if config.data.task != "classification":
        return None
    if config.model.num_classes != "auto":
        return int(config.model.num_classes)
    return len(task.class_names)


def build_model(config: TrainConfig, input_dims: dict[str, int], num_classes: int | None) -> MultimodalLAMModel:
    return MultimodalLAMModel(config.model, input_dims, config.data.streams, config.data.task, num_classes)
