"""The fused FlexAttention backend matches the eager reference.

CPU: forward only (torch 2.14.1 has no CPU backward for FlexAttention). Each case compiles once
(~10-20 s on CPU), reused by both layers; padding and a non-trivial mask are in every case, so the
fused path's padding handling is checked against the eager one (tests/test_lam_encoder.py pins its
semantics).
CUDA: forward and gradients (inputs and generator weights).
"""
import pytest
import torch

from lamflow.lam import LAMConfig, LAMEncoder

CASES = {
    "dynamic-mul-per-head": dict(generator="dynamic", combine="mul", mask_per_head=True),
    "fixed-add-sigmoid": dict(generator="fixed", combine="add", mask_gate="sigmoid"),
}


def encoder_pair(device, **options):
    """Eager and flex encoders with identical (non-trivial) weights."""
    torch.manual_seed(0)
    cfg = dict(dim=32, depth=2, heads=4, max_len=24, mask="multi", dropout=0.0, generator_hidden=32, **options)
    eager = LAMEncoder(LAMConfig(attention="eager", **cfg)).to(device)
    with torch.no_grad():
        for p in eager.generators.parameters():
            p.normal_(0.0, 0.3)
    flex = LAMEncoder(LAMConfig(attention="flex", **cfg)).to(device)
    flex.load_state_dict(eager.state_dict())
    return eager, flex


def batch(device, length: int):
    x = torch.randn(2, length, 32, device=device)
    pad = torch.zeros(2, length, dtype=torch.bool, device=device)
    pad[1, length - 3 :] = True
    return x, pad


@pytest.mark.parametrize("case", CASES)
def test_flex_forward_matches_eager_on_cpu(case):
    eager, flex = encoder_pair("cpu", **CASES[case])
    for length in (12, 21):  # a new length reuses the dynamic-shape kernel (no recompile, no codegen bug)
        x, pad = batch("cpu", length)
        with torch.no_grad():
            reference, fused = eager(x, pad, return_masks=True), flex(x, pad, return_masks=True)
        real = ~pad
        torch.testing.assert_close(fused.hidden[real], reference.hidden[real], atol=1e-5, rtol=1e-5)
        for m_fused, m_reference in zip(fused.masks, reference.masks):
            torch.testing.assert_close(m_fused, m_reference)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention has no CPU backward in torch 2.14.1")
@pytest.mark.parametrize("case", CASES)
def test_flex_gradients_match_eager_on_cuda(case):
    eager, flex = encoder_pair("cuda", **CASES[case])
    x, pad = batch("cuda", 12)
    grads = []
    for encoder in (eager, flex):
        x_leaf = x.clone().requires_grad_(True)
        hidden = encoder(x_leaf, pad).hidden
        (hidden[~pad] * torch.linspace(-1, 1, 32, device="cuda")).sum().backward()
        grads.append((x_leaf.grad, {n: p.grad for n, p in encoder.generators.named_parameters()}))
    (x_grad_eager, gen_eager), (x_grad_flex, gen_flex) = grads
    torch.testing.assert_close(x_grad_flex, x_grad_eager, atol=1e-4, rtol=1e-3)
    for name in gen_eager:
        torch.testing.assert_close(gen_flex[name], gen_eager[name], atol=1e-4, rtol=1e-3, msg=name)
