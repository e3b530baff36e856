"""The task registry: the only list of task names.

Each task lives in one module of this package (options, adapter, head, loss, prediction lines, scoring,
``lamflow eval`` subcommand; see ``spec.TaskSpec``) with its evaluator beside it (``<task>_eval.py``) and
what evaluators share in ``scoring.py``. The trainer, ``lamflow predict``, ``lamflow eval``, ablations and
the demo report ask the registry for a task's spec and never compare task names.

Adding a task: its module here, one line in ``TASKS``, a datasets/ adapter and a YAML config.
"""
from __future__ import annotations

from lamflow.errors import ConfigError
from lamflow.train.tasks.audio_description import AUDIO_DESCRIPTION
from lamflow.train.tasks.captioning import CAPTIONING
from lamflow.train.tasks.classification import CLASSIFICATION
from lamflow.train.tasks.qvhighlights import QVHIGHLIGHTS
from lamflow.train.tasks.spec import TaskSpec

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (QVHIGHLIGHTS, CLASSIFICATION, CAPTIONING, AUDIO_DESCRIPTION)}
TASK_NAMES = tuple(TASKS)


def get_task(name: str) -> TaskSpec:
    """The spec of task ``name`` (data.task); a ConfigError naming the tasks there are otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"data.task {name!r} is not a task; tasks: {', '.join(TASK_NAMES)}") from None


def options_classes(kind: str) -> tuple[type, ...]:
    """The ``data_options`` or ``model_options`` classes of every task in registry order, each once, without
    the classes another one extends (the bases ``DataConfig`` / ``ModelConfig`` inherit their fields from;
    given in reverse, they list the fields in registry order)."""
    classes: list[type] = []
    for spec in TASKS.values():
        option = getattr(spec, kind)
        if option not in classes:
            classes.append(option)
    extended = {base for option in classes for base in option.__mro__[1:]}
    return tuple(option for option in classes if option not in extended)
