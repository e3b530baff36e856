"""Backend choice: "auto" takes the fastest exact path that can run and never one that cannot train; an
impossible explicit path says why; the fused low-rank additive path is exact (forward and gradients)."""
import pytest
import torch

from lamflow.lam import LAMConfig, LAMEncoder
from lamflow.lam.attention import LAM_PATHS, choose_backend

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def small_encoder(attention: str, **options) -> LAMEncoder:
    torch.manual_seed(0)
    return LAMEncoder(LAMConfig(dim=16, depth=2, heads=2, max_len=8, attention=attention, dropout=0.0, **options))


@pytest.mark.parametrize("needs_grad", [True, False])
@pytest.mark.parametrize("lowrank_additive", [True, False])
def test_auto_takes_the_blocked_path_on_cpu_and_never_flex(needs_grad, lowrank_additive):
    assert choose_backend("auto", CPU, needs_grad, lowrank_additive) == "blocked"


def test_auto_uses_flex_on_cuda_and_the_fused_sdpa_path_for_additive_low_rank_masks():
    assert choose_backend("auto", CUDA, True, lowrank_additive=False) == "flex"
    assert choose_backend("auto", CUDA, True, lowrank_additive=True) == "lowrank-sdpa"


@pytest.mark.parametrize("path", LAM_PATHS)
def test_explicit_choices_are_honoured(path):
    assert choose_backend(path, CUDA, True, lowrank_additive=True) == path


def test_explicit_lowrank_sdpa_needs_an_additive_low_rank_mask():
    with pytest.raises(RuntimeError, match=r'"lowrank-sdpa" cannot run: .*combine="add"'):
        choose_backend("lowrank-sdpa", CPU, True, lowrank_additive=False)
    with pytest.raises(ValueError, match=r"attention='lowrank-sdpa' is not valid; .*needs combine='add'.*combine='mul'"):
        LAMConfig(attention="lowrank-sdpa", combine="mul", generator="dynamic")


def test_explicit_flex_with_gradients_on_cpu_raises_a_clear_error():
    with pytest.raises(RuntimeError, match=r'attention="flex" cannot run: .*does not support backward on CPU'):
        small_encoder("flex")(torch.randn(2, 6, 16))


def test_explicit_flex_on_an_unsupported_device_raises():
    with pytest.raises(RuntimeError, match="only supported on cpu and cuda"):
        choose_backend("flex", torch.device("meta"), False, False)


def test_auto_encoder_trains_on_cpu():
    encoder = small_encoder("auto", generator="fixed", combine="mul")
    (encoder(torch.randn(2, 6, 16)).hidden * torch.linspace(-1, 1, 16)).sum().backward()
    assert encoder.generators[0].out.weight.grad.abs().max() > 0


@pytest.mark.parametrize("mask_per_head", [False, True])
def test_fused_low_rank_additive_path_matches_eager_in_forward_and_gradients(mask_per_head):
    options = dict(generator="dynamic", combine="add", mask_gate="none", mask_per_head=mask_per_head)
    eager, fused = small_encoder("eager", **options), small_encoder("lowrank-sdpa", **options)
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
