"""Checkpoints that survive a crash mid-write, load without pickle, and resume only the run they belong to.

A checkpoint is one ``torch.save`` file ``checkpoints/step-00001234.pt`` holding only tensors and plain
python data (so ``torch.load(weights_only=True)`` reads it): the model and optimizer state, the scheduler,
the loader position, every rank's RNG states, the step and the run's config. It is written atomically
(``lamflow.fileio.atomic_open``), so a reader sees the old checkpoint or the new one, never half a file.

A checkpoint never makes lamflow run a command: :func:`checkpoint_config` refuses a stored shard spec that
would (webdataset runs ``pipe:CMD`` urls in a shell); such a spec must come from the command line.

Resuming (:func:`find_resume_checkpoint`) takes the newest checkpoint that loads; one that does not (a
truncated or corrupt file, one holding pickled objects) is reported and skipped. Its config must equal the
current one except for :data:`RESUMABLE_FIELDS`, which say how long the run goes and how it reports (and
the learning rate, warm-up and precision a diverged run is told to change): a checkpoint of another model,
data or optimizer is refused with the differing fields.
"""
from __future__ import annotations

import pickle
import random
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from lamflow.errors import LamflowError
from lamflow.fileio import atomic_open
from lamflow.train.config import TrainConfig, apply_override, config_from_dict

CHECKPOINT_PATTERN = re.compile(r"^step-(\d{8})\.pt$")
TRAINING_STATE_KEYS = ("step", "model", "optimizer", "scheduler", "loader", "rng", "config")
# Config fields a resumed run may change: how long it runs (optim.max_steps extends or shortens the cosine
# from the resumed step on), where and how often it reports, evaluates and checkpoints, how fast it
# evaluates, and the three knobs a diverged run is told to turn (peak learning rate, warm-up, mixed
# precision: it continues from its last checkpoint with them changed). Everything else decides what the
# run computes, so a difference refuses the resume.
RESUMABLE_FIELDS = frozenset({
    "optim.max_steps",
    "optim.lr",
    "optim.warmup_steps",
    "run.amp",
    "data.eval_batch_size",
    "run.out_dir",
    "run.progress",
    "run.threads",
    "run.log_every",
    "run.eval_every",
    "run.checkpoint_every",
    "run.keep_checkpoints",
})
# Data fields holding shard specs, which webdataset opens: a "pipe:CMD" url among them runs CMD in a shell.
SHARD_SPEC_FIELDS = ("data.train_shards", "data.val_shards", "data.train_texts", "data.val_texts")
BAD_SUFFIX = ".bad"  # an unreadable checkpoint is renamed step-N.pt.bad: kept for inspection, never loaded again
DIVERGED_SUFFIX = ".diverged"  # one holding the weights of a run that diverged: never resumed from again


class CheckpointError(LamflowError, ValueError):
    """A checkpoint file that cannot be read, or that lamflow refuses to read (the message says which)."""


class ResumeError(LamflowError, RuntimeError):
    """The run directory's checkpoints cannot be resumed with this config (the message says why and what to do)."""


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step-{step:08d}.pt"


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first (temporary and ``.bad`` files are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if CHECKPOINT_PATTERN.match(p.name)), key=checkpoint_step)


def checkpoint_step(path: Path) -> int:
    """The step of a checkpoint file named ``step-N.pt``."""
    return int(CHECKPOINT_PATTERN.match(path.name).group(1))


def latest_checkpoint(folder: str | Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def save_checkpoint(folder: str | Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``; delete all but the newest ``keep_last``."""
    final = checkpoint_path(folder, step)
    with atomic_open(final, "wb") as handle:
        torch.save(state, handle)
    for old in list_checkpoints(folder)[:-keep_last]:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects; a file that cannot or must not be read is a
    :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; legacy or raw pickles are not read
        with open(path, "rb") as handle:
            head = handle.read(4)
        if not head:
            problem = "is empty"
        elif head.startswith(b"PK"):
            problem = "is truncated or corrupt (its zip archive is incomplete)"
        else:
            problem = "is not a checkpoint written by lamflow (not a torch.save zip archive)"
        raise CheckpointError(f"checkpoint {path} {problem}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        wanted = re.search(r"GLOBAL (\S+)", str(error))
        raise CheckpointError(
            f"checkpoint {path} is refused: it asks to build Python objects"
            f"{f' ({wanted.group(1)})' if wanted else ''} instead of holding only tensors and plain data, "
            "and lamflow never runs code from a data file. Use a checkpoint written by lamflow train."
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt ({reason})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a lamflow checkpoint")
    return state


def load_training_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """:func:`load_checkpoint` plus a check that the file is a training checkpoint (what resume needs)."""
    state = load_checkpoint(path, map_location)
    missing = [key for key in TRAINING_STATE_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a lamflow training checkpoint (it lacks {', '.join(missing)})")
    return state


def checkpoint_config(path: str | Path, state: dict[str, Any], overrides: Iterable[str] = ()) -> TrainConfig:
    """The run config stored in checkpoint ``path`` (its loaded ``state``), changed by ``key=value``
    ``overrides`` (the command line's), validated.

    A stored shard spec that would run a shell command (a ``pipe:`` url, see :data:`SHARD_SPEC_FIELDS`) is
    a :class:`CheckpointError` unless an override replaces it: whoever wrote the file must not choose a
    command for the reader to run.
    """
    config = config_from_dict(state["config"], source=f"{path} (stored config)")
    overrides = list(overrides)
    for override in overrides:
        apply_override(config, override)
    config.validate()
    given = {override.split("=", 1)[0].strip() for override in overrides}
    stored = flatten(state["config"])
    for name in SHARD_SPEC_FIELDS:
        spec = str(stored.get(name) or "")
        # Any "pipe:" at all, not only a leading one: a brace pattern can expand to a pipe: url.
        if name not in given and "pipe:" in spec.lower():
            raise CheckpointError(
                f"checkpoint {path} stores {name}={spec!r}, which would run a shell command; lamflow never runs "
                f"a command named in a data file. Give the shards on the command line instead ({name}=DIR, or "
                "the same pipe: spec if you trust it)"
            )
    return config


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: nested config sections as dotted field names."""
    flat: dict[str, Any] = {}
    for name, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``field: saved -> current`` for every field (dotted name) that differs and may not change on resume."""
    old, new = flatten(saved), flatten(current)
    missing = "(absent)"
    return [
        f"{name}: {old.get(name, missing)!r} -> {new.get(name, missing)!r}"
        for name in sorted(set(old) | set(new))
        if name not in RESUMABLE_FIELDS and old.get(name, missing) != new.get(name, missing)
    ]


@dataclass
class ResumePoint:
    """What :func:`find_resume_checkpoint` found: the checkpoint to continue from (None: start fresh) and
    the newer files that could not be read, with the reason."""

    path: Path | None = None
    state: dict[str, Any] = field(default_factory=dict)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


def find_resume_checkpoint(folder: str | Path, config: dict[str, Any],
                           map_location: str | torch.device = "cpu") -> ResumePoint:
    """The newest readable training checkpoint in ``folder`` (newer unreadable ones are listed, not
    loaded), checked against ``config`` (``config_to_dict`` of the current run): a difference outside
    :data:`RESUMABLE_FIELDS` raises :class:`ResumeError`. No checkpoint at all: ``ResumePoint()``.

    Nothing is changed on disk (every rank of a job calls this); see :func:`set_aside`.
    """
    point = ResumePoint()
    for path in reversed(list_checkpoints(folder)):
        try:
            state = load_training_state(path, map_location)
        except CheckpointError as error:
            point.unreadable.append((path, str(error)))
            continue
        differences = config_differences(state["config"], config)
        if differences:
            raise ResumeError(
                f"cannot resume from {path}: the config differs in {'; '.join(differences)}. A resumed run may "
                f"change only {', '.join(sorted(RESUMABLE_FIELDS))}. Use the checkpoint's config (its "
                "config.yaml) to continue that run, or a new run.out_dir to start another one."
            )
        point.path, point.state = path, state
        return point
    if point.unreadable:
        raise ResumeError(
            f"no readable checkpoint in {folder}: " + "; ".join(reason for _, reason in point.unreadable)
            + ". Move the bad files away to start again from step 0, or restore a good checkpoint."
        )
    return point


def set_aside(path: Path, suffix: str = BAD_SUFFIX) -> Path:
    """Rename a checkpoint that must not be resumed (unreadable: ``step-N.pt.bad``; diverged:
    :data:`DIVERGED_SUFFIX`): kept for inspection, but no longer the "newest" checkpoint that pruning keeps
    and a later resume tries first."""
    target = path.with_name(path.name + suffix)
    path.replace(target)
    return target


def capture_rng_state() -> dict[str, Any]:
    """This process's torch, CUDA, numpy and python RNG states as tensors and lists (no pickled objects)."""
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gauss": float(cached_gauss),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gauss"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))
