"""Mask gates are numerically stable: finite values and gradients for any finite logit, in every gate x
combine and on every CPU attention path, even when a whole row of the mask saturates; and the stable
log-softplus is the exact formula wherever that one is finite."""
import math

import pytest
import torch
import torch.nn.functional as F

from lamflow.lam.attention import LAM_PATHS
from lamflow.lam.generator import LAMMask, log_softplus_gate, mask_values

GATES = [(combine, gate) for combine in ("mul", "add") for gate in ("none", "sigmoid", "softplus")]
EXTREME = torch.tensor([-1e4, -1e3, -200.0, -104.0, -90.0, -20.0, 0.0, 20.0, 90.0, 1e3, 1e4])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("combine, gate", GATES)
def test_mask_values_and_gradients_are_finite_for_extreme_logits(combine, gate, dtype):
    z = EXTREME.to(dtype).requires_grad_(True)
    values = mask_values(z, combine, gate)
    (grad,) = torch.autograd.grad(values.sum(), z)
    assert torch.isfinite(values).all(), values
    assert torch.isfinite(grad).all(), grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_softplus_gate_equals_the_naive_formula_where_that_is_finite(dtype):
    z = torch.linspace(-80.0, 80.0, 4001, dtype=dtype, requires_grad=True)
    naive = torch.log(F.softplus(z) / math.log(2.0))
    (naive_grad,) = torch.autograd.grad(naive.sum(), z)
    stable = log_softplus_gate(z)
    (stable_grad,) = torch.autograd.grad(stable.sum(), z)
    torch.testing.assert_close(stable, naive)
    torch.testing.assert_close(stable_grad, naive_grad)


def test_log_softplus_gate_keeps_the_identity_at_zero():
    assert log_softplus_gate(torch.zeros(1)).item() == 0.0  # add: M = 0 at initialisation


@pytest.mark.parametrize("dtype, low", [(torch.float32, -200.0), (torch.float64, -800.0)])
def test_log_softplus_gate_is_continuous_across_the_underflow_threshold(dtype, low):
    # Below z = -40, log(softplus(z)) = z + log1p(-exp(z)/2 + ...) equals z to fp64 precision; the range
    # crosses the dtype's underflow threshold (fp32: -87.3, fp64: -708.4), where the formula switches.
    z = torch.linspace(low, -40.0, 2001, dtype=dtype)
    torch.testing.assert_close(log_softplus_gate(z), z - math.log(math.log(2.0)))


@pytest.mark.parametrize("path", ["eager", "blocked"])
@pytest.mark.parametrize("combine, gate", GATES)
def test_attention_stays_finite_when_whole_mask_rows_saturate(path, combine, gate):
    """Rows of +-1e4 logits (row 0: all -1e4, which made softplus + add a row of -inf and then nan),
    with key padding: outputs and the gradients of q, k, v and the logits are finite."""
    torch.manual_seed(0)
    batch, heads, length = 2, 2, 6
    q, k, v = (torch.randn(batch, heads, length, 4, requires_grad=True) for _ in range(3))
    logits = 1e4 * torch.randn(batch, 1, length, length).sign()
    logits[:, :, 0] = -1e4
    logits[:, :, 1] = 1e4
    logits.requires_grad_(True)
    pad = torch.zeros(batch, length, dtype=torch.bool)
    pad[1, 4:] = True
    out = LAM_PATHS[path](q, k, v, LAMMask(combine, gate, logits=logits), pad)
    grads = torch.autograd.grad(out, [q, k, v, logits], torch.randn_like(out))
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(g).all() for g in grads)
