"""Backend choice: "auto" takes the fastest path that can run and never one that cannot train; an impossible
explicit "flex" says why; the fused low-rank additive path is exact (forward and gradients)."""
import pytest
import torch

from lamflow.lam import LAMConfig, LAMEncoder
from lamflow.lam.attention import FLEX_MIN_LENGTH_CPU, choose_backend

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def small_encoder(attention: str, **options) -> LAMEncoder:
    torch.manual_seed(0)
    return LAMEncoder(LAMConfig(dim=16, depth=2, heads=2, max_len=8, attention=attention, dropout=0.0, **options))


@pytest.mark.parametrize("length", [16, FLEX_MIN_LENGTH_CPU, 4096])
def test_auto_never_picks_flex_when_gradients_are_needed_on_cpu(length):
    assert choose_backend("auto", CPU, needs_grad=True, length=length, lowrank_additive=False) == "eager"


def test_auto_uses_flex_for_long_cpu_inference_and_always_on_cuda():
    assert choose_backend("auto", CPU, False, FLEX_MIN_LENGTH_CPU, False) == "flex"
    assert choose_backend("auto", CPU, False, FLEX_MIN_LENGTH_CPU - 1, False) == "eager"
    assert choose_backend("auto", CUDA, True, 16, False) == "flex"


def test_auto_uses_the_fused_sdpa_path_for_additive_low_rank_masks_even_when_training_on_cpu():
    assert choose_backend("auto", CPU, True, 16, lowrank_additive=True) == "lowrank-sdpa"


def test_explicit_choices_are_honoured():
    assert choose_backend("eager", CUDA, False, 4096, True) == "eager"
    assert choose_backend("flex", CPU, False, 16, True) == "flex"


def test_explicit_flex_with_gradients_on_cpu_raises_a_clear_error():
    with pytest.raises(RuntimeError, match=r'attention="flex" cannot run: .*does not support backward on CPU'):
        small_encoder("flex")(torch.randn(2, 6, 16))


def test_explicit_flex_on_an_unsupported_device_raises():
    with pytest.raises(RuntimeError, match="only supported on cpu and cuda"):
        choose_backend("flex", torch.device("meta"), False, 16, False)


def test_auto_encoder_trains_on_cpu():
    encoder = small_encoder("auto", generator="fixed", combine="mul")
    (encoder(torch.randn(2, 6, 16)).hidden * torch.linspace(-1, 1, 16)).sum().backward()
    assert encoder.generators[0].out.weight.grad.abs().max() > 0


@pytest.mark.parametrize("mask_per_head", [False, True])
def test_fused_low_rank_additive_path_matches_eager_in_forward_and_gradients(mask_per_head):
    options = dict(generator="dynamic", combine="add", mask_per_head=mask_per_head)
    eager, fused = small_encoder("eager", **options), small_encoder("auto", **options)
    with torch.no_grad():
        for p in eager.generators.parameters():
            p.normal_(0.0, 0.3)
    fused.load_state_dict(eager.state_dict())
    x = torch.randn(2, 10, 16)
    pad = torch.zeros(2, 10, dtype=torch.bool)
    pad[0, 7:] = True
    outputs = []
    for encoder in (eager, fused):
        x_leaf = x.clone().requires_grad_(True)
        hidden = encoder(x_leaf, pad).hidden
        (hidden[~pad] * torch.linspace(-1, 1, 16)).sum().backward()
        outputs.append((hidden[~pad], x_leaf.grad, [p.grad for p in encoder.generators.parameters()]))
    (h_eager, gx_eager, gg_eager), (h_fused, gx_fused, gg_fused) = outputs
    torch.testing.assert_close(h_fused, h_eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx_fused, gx_eager, atol=1e-5, rtol=1e-4)
    for g_fused, g_eager in zip(gg_fused, gg_eager):
        torch.testing.assert_close(g_fused, g_eager, atol=1e-5, rtol=1e-4)
