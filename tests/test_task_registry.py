"""The task registry: each task's spec is found by name, declares its own config fields, and brings its own
`lamflow eval` subcommand."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from lamflow.commands import eval as eval_command
from lamflow.errors import ConfigError
from lamflow.train.config import DataConfig, ModelConfig, load_config
from lamflow.train.tasks import TASK_NAMES, TASKS, get_task


def test_an_unknown_task_names_the_tasks_there_are():
    with pytest.raises(ConfigError, match="tasks: qvhighlights, classification, captioning, audio_description"):
        get_task("segmentation")


def test_the_config_sections_hold_every_tasks_fields_under_flat_keys():
    data_fields = {f.name for f in dataclasses.fields(DataConfig)}
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    for spec in TASKS.values():
        assert {f.name for f in dataclasses.fields(spec.data_options)} <= data_fields
        assert {f.name for f in dataclasses.fields(spec.model_options)} <= model_fields


def test_a_field_of_another_task_is_refused_with_the_task_it_belongs_to():
    with pytest.raises(ConfigError, match=r"data.labels applies to task classification only \(task is qvhighlights\)"):
        load_config("qvhighlights_lam", ["data.labels=labels.csv"])
    with pytest.raises(ConfigError, match="data.window_seconds applies to task qvhighlights only"):
        load_config("captioning", ["data.window_seconds=30"])
    # Fields two tasks share belong to both: the caption files serve captioning and audio description.
    assert load_config("audio_description", ["data.train_captions=ads.jsonl"]).data.train_captions == "ads.jsonl"


def test_every_task_brings_its_eval_subcommand():
    parser = argparse.ArgumentParser()
    eval_command.register(parser.add_subparsers())
    choices = parser._subparsers._group_actions[0].choices["eval"]._subparsers._group_actions[0].choices
    assert list(choices) == [TASKS[name].eval_command.name for name in TASK_NAMES]
    for name in choices:  # --out is every subcommand's
        assert "--out" in choices[name].format_help()
