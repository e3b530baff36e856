"""Training configs: YAML files with every field documented, typed overrides, errors that name the field."""
import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

from lamflow.lam import LAMConfig
from lamflow.train.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    apply_override,
    config_from_dict,
    config_to_dict,
    load_config,
)
from lamflow.train.model import lam_config_from

CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"
SECTIONS = (DataConfig, ModelConfig, OptimConfig, RunConfig)


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", ["qvhighlights_lam", "qvhighlights_vanilla", "classification"])
def test_shipped_example_configs_load_and_validate(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.data.task == ("classification" if name == "classification" else "qvhighlights")


def test_vanilla_config_differs_from_the_lam_config_only_by_mask_and_output_folder():
    lam = config_to_dict(load_config(CONFIGS / "qvhighlights_lam.yaml"))
    vanilla = config_to_dict(load_config(CONFIGS / "qvhighlights_vanilla.yaml"))
    assert vanilla["model"]["mask"] == "none" and lam["model"]["mask"] == "multi"
    for config in (lam, vanilla):
        del config["model"]["mask"], config["run"]["out_dir"]
    assert lam == vanilla


def test_every_field_is_documented_by_a_comment_above_it():
    for section in SECTIONS:
        source = inspect.getsource(section).splitlines()
        for field in dataclasses.fields(section):
            line = next(i for i, text in enumerate(source) if text.strip().startswith(f"{field.name}:"))
            above = source[line - 1].strip()
            # Grouped fields (loss weights) share the comment above the group.
            while not above.startswith("#") and above.split(":")[0].isidentifier():
                line -= 1
                above = source[line - 1].strip()
            assert above.startswith("#"), f"{section.__name__}.{field.name} has no comment"


def test_every_lam_encoder_setting_can_be_set_from_the_model_section():
    assert {f.name for f in dataclasses.fields(LAMConfig)} <= {f.name for f in dataclasses.fields(ModelConfig)}
    lam = lam_config_from(ModelConfig(dim=64, heads=2, mask="single", combine="add", generator_rank=3))
    assert (lam.dim, lam.heads, lam.mask, lam.combine, lam.generator_rank) == (64, 2, "single", "add", 3)


def test_overrides_are_coerced_to_the_field_types():
    config = TrainConfig()
    for override in ("optim.lr=1e-3", "optim.max_steps=10", "data.streams=video,audio", "model.downsample={audio: 5}",
                     "model.input_dims={video: 512, audio: 64}", "data.samples_per_epoch=null", "run.out_dir=123",
                     "optim.betas=[0.9, 0.95]", "run.progress=false", "model.num_classes=7"):
        apply_override(config, override)
    assert config.optim.lr == 1e-3 and config.optim.max_steps == 10
    assert config.data.streams == ("video", "audio") and config.data.samples_per_epoch is None
    assert config.model.downsample == {"audio": 5} and config.model.input_dims == {"video": 512, "audio": 64}
    assert config.run.out_dir == "123" and config.optim.betas == (0.9, 0.95) and config.run.progress is False
    assert config.model.num_classes == 7


def test_choice_words_that_yaml_reads_as_booleans_stay_words():
    config = TrainConfig()
    for override in ("run.amp=off", "model.mask=none", "model.num_classes=auto"):
        apply_override(config, override)
    assert (config.run.amp, config.model.mask, config.model.num_classes) == ("off", "none", "auto")


def test_yaml_exponents_without_a_dot_are_read_as_floats(tmp_path):
    # PyYAML reads 1e-3 as the string "1e-3"; a float field accepts it.
    path = tmp_path / "c.yaml"
    path.write_text("data: {train_shards: s, train_annotations: a.jsonl}\noptim: {lr: 1e-3}\n")
    assert load_config(path).optim.lr == 1e-3


def test_unknown_field_names_the_field_and_suggests_close_matches(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"optim": {"lrr": 0.1}})
    with pytest.raises(ConfigError, match=r"unknown field 'optim.lrr'; did you mean 'optim.lr'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown field 'model.maks'; did you mean 'model.mask'"):
        apply_override(TrainConfig(), "model.maks=none")
    with pytest.raises(ConfigError, match=r"unknown field 'rnu'; did you mean 'run'\? \(fields of the top level: data, model, optim, run\)"):
        config_from_dict({"rnu": {}})


def test_wrong_type_names_the_field_and_the_expected_type(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"optim": {"max_steps": "ten"}})
    with pytest.raises(ConfigError, match=r"field 'optim.max_steps' expects int, got str 'ten'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"field 'model.mask' expects 'none' \| 'single' \| 'multi', got str 'multii'"):
        apply_override(TrainConfig(), "model.mask=multii")
    with pytest.raises(ConfigError, match=r"field 'run.progress' expects bool"):
        apply_override(TrainConfig(), "run.progress=maybe")
    with pytest.raises(ConfigError, match=r"'model.input_dims' expects dict\[str, int\] \| 'auto'"):
        apply_override(TrainConfig(), "model.input_dims=everything")


def test_malformed_overrides_and_sections_are_refused():
    with pytest.raises(ConfigError, match="section.field=value"):
        apply_override(TrainConfig(), "optim.lr")
    with pytest.raises(ConfigError, match="optim is a section"):
        apply_override(TrainConfig(), "optim=3")


def test_missing_task_inputs_and_bad_values_are_errors_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match="data.train_annotations is required"):
        load_config(write_yaml(tmp_path / "a.yaml", {"data": {"train_shards": "s"}}))
    with pytest.raises(ConfigError, match="data.labels is required"):
        load_config(write_yaml(tmp_path / "b.yaml", {"data": {"train_shards": "s", "task": "classification"}}))
    with pytest.raises(ConfigError, match=r"model.dim \(100\) must be divisible by model.heads \(8\)"):
        load_config(CONFIGS / "qvhighlights_lam.yaml", ["model.dim=100", "model.heads=8"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_config_survives_a_round_trip_through_plain_data():
    config = load_config(CONFIGS / "qvhighlights_lam.yaml", ["model.input_dims={video: 8}"])
    assert config_from_dict(config_to_dict(config)) == config
    assert yaml.safe_load(yaml.safe_dump(config_to_dict(config))) == config_to_dict(config)


def test_invalid_yaml_and_downsampling_an_unknown_stream_are_errors(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: {train_shards: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match=r"model.downsample names stream\(s\) \['sound'\]"):
        load_config(CONFIGS / "qvhighlights_lam.yaml", ["model.downsample={sound: 2}"])
