"""Training configs: YAML files with every field documented, typed overrides, errors that name the field."""
import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

from lamflow.datasets.loader import LoaderConfig
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
    shipped_configs,
)

CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"
SECTIONS = (DataConfig, ModelConfig, OptimConfig, RunConfig, LoaderConfig)


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", ["qvhighlights_lam", "qvhighlights_vanilla", "classification", "demo"])
def test_shipped_configs_load_by_path_and_by_name(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.data.task == ("classification" if name == "classification" else "qvhighlights")
    assert load_config(name) == config == load_config(f"{name}.yaml")
    assert shipped_configs()[name] == CONFIGS / f"{name}.yaml"


def test_the_vanilla_config_is_the_lam_config_plus_an_override():
    lam = config_to_dict(load_config("qvhighlights_lam"))
    vanilla = config_to_dict(load_config("qvhighlights_vanilla"))
    assert vanilla["model"]["encoder"]["mask"] == "none" and lam["model"]["encoder"]["mask"] == "multi"
    for config in (lam, vanilla):
        del config["model"]["encoder"]["mask"], config["run"]["out_dir"]
    assert lam == vanilla
    assert "base: qvhighlights_lam.yaml" in (CONFIGS / "qvhighlights_vanilla.yaml").read_text()
    assert len((CONFIGS / "qvhighlights_vanilla.yaml").read_text().splitlines()) < 15  # not a copy


def test_a_base_chain_merges_sections_and_refuses_loops(tmp_path):
    write_yaml(tmp_path / "base.yaml", {"data": {"train_shards": "s", "train_annotations": "a.jsonl",
                                                 "loader": {"batch_size": 4, "num_workers": 1}}})
    child = write_yaml(tmp_path / "child.yaml", {"base": "base.yaml", "data": {"loader": {"batch_size": 2}}})
    loaded = load_config(child).data.loader
    assert (loaded.batch_size, loaded.num_workers) == (2, 1)
    write_yaml(tmp_path / "loop.yaml", {"base": "loop.yaml"})
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "loop.yaml")


def test_every_field_is_documented_by_a_comment_above_it():
    for section in SECTIONS:
        for field in dataclasses.fields(section):
            # A task's fields are declared by its options class (DataConfig and ModelConfig inherit them).
            owner = next(cls for cls in section.__mro__ if field.name in vars(cls).get("__annotations__", {}))
            source = inspect.getsource(owner).splitlines()
            line = next(i for i, text in enumerate(source) if text.strip().startswith(f"{field.name}:"))
            above = source[line - 1].strip()
            # Grouped fields (loss weights) share the comment above the group.
            while not above.startswith("#") and above.split(":")[0].isidentifier():
                line -= 1
                above = source[line - 1].strip()
            assert above.startswith("#"), f"{owner.__name__}.{field.name} has no comment"


def test_component_configs_are_composed_not_restated():
    # One definition of each knob: the model section holds a LAMConfig, the data section a LoaderConfig.
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    data_fields = {f.name for f in dataclasses.fields(DataConfig)}
    assert not model_fields & ({f.name for f in dataclasses.fields(LAMConfig)} - {"encoder"})
    assert not data_fields & {f.name for f in dataclasses.fields(LoaderConfig)}
    config = load_config("qvhighlights_lam", ["model.encoder.dim=64", "model.encoder.heads=2", "model.encoder.combine=add",
                                              "data.loader.batch_size=3"])
    assert isinstance(config.model.encoder, LAMConfig) and isinstance(config.data.loader, LoaderConfig)
    assert (config.model.encoder.dim, config.model.encoder.combine, config.data.loader.batch_size) == (64, "add", 3)


@pytest.mark.parametrize("old, new", [("model.mask", "model.encoder.mask"), ("model.dim", "model.encoder.dim"),
                                      ("data.batch_size", "data.loader.batch_size"), ("data.streams", "data.loader.streams")])
def test_old_flat_keys_name_their_new_place(tmp_path, old, new):
    with pytest.raises(ConfigError, match=f"field '{old}' has moved: write '{new}'"):
        apply_override(TrainConfig(), f"{old}=1")
    section, name = old.split(".")
    with pytest.raises(ConfigError, match=f"'{old}' has moved: write '{new}'"):
        load_config(write_yaml(tmp_path / "flat.yaml", {section: {name: 1}}))


def test_overrides_are_coerced_to_the_field_types():
    config = TrainConfig()
    for override in ("optim.lr=1e-3", "optim.max_steps=10", "data.loader.streams=video,audio", "model.downsample={audio: 5}",
                     "model.input_dims={video: 512, audio: 64}", "data.loader.samples_per_epoch=null", "run.out_dir=123",
                     "optim.betas=[0.9, 0.95]", "run.progress=false", "model.num_classes=7"):
        apply_override(config, override)
    assert config.optim.lr == 1e-3 and config.optim.max_steps == 10
    assert config.data.loader.streams == ("video", "audio") and config.data.loader.samples_per_epoch is None
    assert config.model.downsample == {"audio": 5} and config.model.input_dims == {"video": 512, "audio": 64}
    assert config.run.out_dir == "123" and config.optim.betas == (0.9, 0.95) and config.run.progress is False
    assert config.model.num_classes == 7


def test_choice_words_that_yaml_reads_as_booleans_stay_words():
    config = TrainConfig()
    for override in ("run.amp=off", "model.encoder.mask=none", "model.num_classes=auto"):
        apply_override(config, override)
    assert (config.run.amp, config.model.encoder.mask, config.model.num_classes) == ("off", "none", "auto")


def test_yaml_exponents_without_a_dot_are_read_as_floats(tmp_path):
    # PyYAML reads 1e-3 as the string "1e-3"; a float field accepts it.
    path = tmp_path / "c.yaml"
    path.write_text("data: {train_shards: s, train_annotations: a.jsonl}\noptim: {lr: 1e-3}\n")
    assert load_config(path).optim.lr == 1e-3


def test_unknown_field_names_the_field_and_suggests_close_matches(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"optim": {"lrr": 0.1}})
    with pytest.raises(ConfigError, match=r"unknown field 'optim.lrr'; did you mean 'optim.lr'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown field 'model.encoder.maks'; did you mean 'model.encoder.mask'"):
        apply_override(TrainConfig(), "model.encoder.maks=none")
    expected = r"unknown field 'rnu'; did you mean 'run'\? \(fields of the top level: data, model, optim, run\)"
    with pytest.raises(ConfigError, match=expected):
        config_from_dict({"rnu": {}})


def test_wrong_type_names_the_field_and_the_expected_type(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"optim": {"max_steps": "ten"}})
    with pytest.raises(ConfigError, match=r"field 'optim.max_steps' expects int, got str 'ten'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"'model.encoder.mask' = 'multii' is not valid; allowed values: none, single, multi"):
        load_config("demo", ["model.encoder.mask=multii"])
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
    with pytest.raises(ConfigError, match=r"'model.encoder.dim' = 100 is not valid; allowed values: multiples of heads \(8\)"):
        load_config(CONFIGS / "qvhighlights_lam.yaml", ["model.encoder.dim=100", "model.encoder.heads=8"])
    with pytest.raises(ConfigError, match="is neither a file nor a shipped config; shipped configs: .*classification"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("override, message", [
    ("data.loader.batch_size=0", "'data.loader.batch_size' = 0 is not valid; allowed values: an int >= 1"),
    ("data.eval_batch_size=-1", "data.eval_batch_size must be an integer >= 1"),
    ("model.encoder.dropout=1.0", "'model.encoder.dropout' = 1.0 is not valid; allowed values: 0 <= dropout < 1"),
    ("model.encoder.depth=0", "'model.encoder.depth' = 0 is not valid"),
    ("model.num_windows=0", "model.num_windows must be an integer >= 1"),
    ("model.max_period=0", "model.max_period must be a finite number > 0"),
    ("model.saliency_weight=-1", "model.saliency_weight must be a finite number >= 0"),
    ("optim.lr=0", "optim.lr must be a finite number > 0"),
    ("optim.betas=[0.9, 1.0]", r"optim.betas must both be in \[0, 1\)"),
    ("optim.min_lr_ratio=2", r"optim.min_lr_ratio must be in \[0, 1\]"),
    ("run.keep_checkpoints=0", "run.keep_checkpoints must be an integer >= 1"),
    ("run.seed=-3", "run.seed must be an integer >= 0"),
    ("data.loader.required_streams=[depth]", "'data.loader.required_streams' = \\('depth',\\) is not valid"),
])
def test_every_size_rate_and_probability_is_range_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", [override])


def test_config_survives_a_round_trip_through_plain_data():
    config = load_config(CONFIGS / "qvhighlights_lam.yaml", ["model.input_dims={text: 12, video: 8, audio: 4}"])
    assert config_from_dict(config_to_dict(config)) == config
    assert yaml.safe_load(yaml.safe_dump(config_to_dict(config))) == config_to_dict(config)


def test_invalid_yaml_and_downsampling_an_unknown_stream_are_errors(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: {train_shards: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match=r"model.downsample names stream\(s\) \['sound'\] that are not in data.loader.streams"):
        load_config(CONFIGS / "qvhighlights_lam.yaml", ["model.downsample={sound: 2}"])


def test_the_fixed_generator_needs_a_fixed_layout_that_fits_its_width():
    fixed = ["model.encoder.generator=fixed", "model.encoder.max_len=64"]
    with pytest.raises(ConfigError, match="generator=fixed needs data.loader.fixed_lengths"):
        load_config("demo", fixed)
    layout = "data.loader.fixed_lengths={text: 8, video: 16, audio: 80}"
    with pytest.raises(ConfigError, match="sequences of 104 tokens .* more than model.encoder.max_len=64"):
        load_config("demo", [*fixed, layout])
    config = load_config("demo", [*fixed, layout, "model.downsample={audio: 2}"])  # 8 + 16 + 40 = 64
    assert config.data.loader.fixed_lengths == {"text": 8, "video": 16, "audio": 80}
    assert load_config("demo", ["model.encoder.generator=fixed", "model.encoder.mask=none"])  # no mask, no layout needed
    with pytest.raises(ConfigError, match="fixed_lengths.* for every stream"):
        load_config("demo", ["data.loader.fixed_lengths={video: 16}"])
