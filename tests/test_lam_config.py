"""LAMConfig: bad values raise ValueError naming the field and the allowed values."""
import pytest

from lamflow.lam import LAMConfig


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("mask", "double", "none, single, multi"),
        ("combine", "div", "mul, add"),
        ("generator", "static", "fixed, dynamic"),
        ("generator_input", "output", "hidden, input"),
        ("mask_gate", "tanh", "none, sigmoid, softplus"),
        ("attention", "flash", "auto, eager, flex"),
        ("depth", 0, "integers >= 1"),
        ("max_len", -4, "integers >= 1"),
        ("generator_rank", 2.5, "integers >= 1"),
        ("dim", 30, "multiples of heads"),
        ("dropout", 1.0, "0 <= dropout < 1"),
        ("mlp_ratio", 0, "numbers > 0"),
        ("mask_per_head", "yes", "True, False"),
    ],
)
def test_invalid_value_names_field_and_allowed_values(field, value, allowed):
    with pytest.raises(ValueError) as error:
        LAMConfig(**{"dim": 32, "heads": 4, field: value})
    assert f"LAMConfig.{field}={value!r}" in str(error.value)
    assert allowed in str(error.value)


def test_defaults_are_valid_and_follow_the_spec():
    cfg = LAMConfig()
    # dynamic by default: the paper's fixed generator is defined only for inputs laid out at fixed positions.
    assert (cfg.mask, cfg.combine, cfg.generator, cfg.attention) == ("multi", "mul", "dynamic", "auto")
    assert cfg.mask_heads == 1
    assert LAMConfig(heads=4, dim=32, mask_per_head=True).mask_heads == 4
