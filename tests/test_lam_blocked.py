"""The blocked path (lamflow.lam.blocked: what attention="auto" runs on CPU) is the eager reference computed
another way: the same outputs and every gradient in every mask configuration, across many blocks; padded keys
get exactly zero attention; and it never allocates anything of the size B x H x L x L."""
import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from lamflow.lam import LAMConfig, LAMEncoder, blocked
from lamflow.lam.attention import LAM_PATHS
from lamflow.lam.generator import LAMMask

DIM, HEADS, LENGTH = 24, 3, 11
STRUCTURE = list(itertools.product(["single", "multi"], ["mul", "add"], ["fixed", "dynamic"], [False, True]))
GATED = [(combine, gate, generator) for combine in ("mul", "add") for gate, generator in
         (("sigmoid", "fixed"), ("softplus", "dynamic"))]


@pytest.fixture(params=["row-blocks", "head-groups"])
def small_blocks(monkeypatch, request):
    """Blocks small enough that every sample has several, the last one partial: 6 + 5 query rows of one
    head, or all rows of 2 + 1 heads. (The additive forward's SDPA blocks take all heads and the rows the
    budget leaves: 6 + 5 for a shared mask with row blocks.)"""
    budget = {"row-blocks": 6 * LENGTH, "head-groups": 2 * LENGTH * LENGTH}[request.param]
    monkeypatch.setattr(blocked, "BLOCK_ELEMENTS", budget)
    assert blocked.blocks(HEADS, LENGTH) == {
        "row-blocks": ([slice(0, 6), slice(6, 11)], [slice(0, 1), slice(1, 2), slice(2, 3)]),
        "head-groups": ([slice(0, 11)], [slice(0, 2), slice(2, 3)]),
    }[request.param]


def encoder_pair(device: str = "cpu", **options) -> tuple[LAMEncoder, LAMEncoder]:
    """Eager and blocked fp64 encoders with the same non-trivial weights."""
    torch.manual_seed(0)
    cfg = dict(dim=DIM, depth=2, heads=HEADS, max_len=16, dropout=0.0, generator_hidden=16, **options)
    eager = LAMEncoder(LAMConfig(attention="eager", **cfg)).double()
    with torch.no_grad():
        for p in eager.generators.parameters():
            p.normal_(0.0, 0.3)
    fast = LAMEncoder(LAMConfig(attention="blocked", **cfg)).double()
    fast.load_state_dict(eager.state_dict())
    return eager.to(device), fast.to(device)


def outputs_and_gradients(encoder: LAMEncoder, x: torch.Tensor, pad: torch.Tensor) -> dict[str, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    hidden = encoder(x, pad).hidden
    direction = torch.linspace(-1.0, 1.0, DIM, dtype=x.dtype, device=x.device)
    (hidden[~pad] * direction).sum().backward()
    grads = {name: p.grad for name, p in encoder.named_parameters()}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    return {"hidden": hidden[~pad].detach(), "x.grad": x.grad, **grads}


def assert_same(fast: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert fast.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(fast[name], reference[name], atol=1e-10, rtol=1e-8, msg=name)


def batch(device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    x = torch.randn(2, LENGTH, DIM, dtype=torch.float64, device=device)
    pad = torch.zeros(2, LENGTH, dtype=torch.bool, device=device)
    pad[1, 8:] = True
    return x, pad


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """torch threads: 1 = one loop over the samples, 2 = samples in parallel on the blocked path's pool."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("mask, combine, generator, per_head", STRUCTURE)
def test_blocked_matches_eager_in_output_and_every_gradient(small_blocks, threads, mask, combine, generator, per_head):
    eager, fast = encoder_pair(mask=mask, combine=combine, generator=generator, mask_per_head=per_head)
    x, pad = batch()
    assert_same(outputs_and_gradients(fast, x, pad), outputs_and_gradients(eager, x, pad))
    assert torch.get_num_threads() == threads  # the parallel path gives the threads back


@pytest.mark.parametrize("combine, gate, generator", GATED)
def test_blocked_matches_eager_with_gates(small_blocks, combine, gate, generator):
    eager, fast = encoder_pair(mask="multi", combine=combine, generator=generator, mask_gate=gate)
    x, pad = batch()
    assert_same(outputs_and_gradients(fast, x, pad), outputs_and_gradients(eager, x, pad))


def test_blocked_forward_equals_eager_at_the_default_block_size_in_fp32():
    torch.manual_seed(0)
    cfg = dict(dim=64, depth=1, heads=4, max_len=300, dropout=0.0, mask="single", generator="fixed")
    eager, fast = (LAMEncoder(LAMConfig(attention=path, **cfg)).eval() for path in ("eager", "blocked"))
    with torch.no_grad():
        for p in eager.generators.parameters():
            p.normal_(0.0, 0.1)
    fast.load_state_dict(eager.state_dict())
    x = torch.randn(3, 300, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x).hidden, eager(x).hidden, atol=2e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("combine", ["mul", "add"])
def test_blocked_matches_eager_on_cuda(combine):
    eager, fast = encoder_pair("cuda", mask="multi", combine=combine, generator="dynamic", mask_per_head=True)
    x, pad = batch("cuda")
    assert_same(outputs_and_gradients(fast, x, pad), outputs_and_gradients(eager, x, pad))


@pytest.mark.parametrize("combine", ["mul", "add"])
@pytest.mark.parametrize("path, form", [("blocked", "dense"), ("blocked", "lowrank"), ("lowrank-sdpa", "lowrank")])
def test_padded_keys_receive_exactly_zero_attention(small_blocks, combine, path, form):
    if path == "lowrank-sdpa" and combine == "mul":
        pytest.skip("lowrank-sdpa is for additive masks only")
    # v = identity makes the attention output equal to the attention matrix itself (head dim = LENGTH).
    batch_size, heads = 2, HEADS
    torch.manual_seed(0)
    q, k = torch.randn(2, batch_size, heads, LENGTH, LENGTH).unbind(0)
    v = torch.eye(LENGTH).expand(batch_size, heads, LENGTH, LENGTH)
    pad = torch.zeros(batch_size, LENGTH, dtype=torch.bool)
    pad[0, 7:] = True
    # A mask that tries hard to un-mask the padded keys: huge on padded columns, negative elsewhere.
    if form == "dense":
        logits = torch.full((batch_size, 1, LENGTH, LENGTH), -3.0)
        logits[..., 7:] = 1e4
        mask = LAMMask(combine, "none", logits=logits)
    else:  # u . w = 100 on padded columns, -3 elsewhere
        u = torch.ones(batch_size, 1, LENGTH, 1)
        w = torch.full((batch_size, 1, LENGTH, 1), -3.0)
        w[:, :, 7:] = 100.0
        mask = LAMMask(combine, "none", u=u, v=w)
    attention = LAM_PATHS[path](q, k, v, mask, pad)
    assert torch.isfinite(attention).all()
    assert (attention[0, :, :, 7:] == 0).all()
    torch.testing.assert_close(attention.sum(-1), torch.ones(batch_size, heads, LENGTH))


class LargestAllocation(TorchDispatchMode):
    """The largest tensor storage (in elements) any aten op allocates; outputs that alias an input (views,
    in-place ops) allocate nothing and are not counted. Sees the calling thread's ops only (modes are
    thread-local), so the test runs on one torch thread: the blocked path then loops on this thread."""

    def __init__(self):
        super().__init__()
        self.elements = 0
        self.softmaxes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.softmaxes += func is torch.ops.aten._softmax.default
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        inputs = {t.untyped_storage().data_ptr() for t in tensors}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.elements = max(self.elements, t.untyped_storage().nbytes() // t.element_size())
        return out


@pytest.mark.parametrize("combine", ["mul", "add"])
@pytest.mark.parametrize("form", ["dense-shared", "lowrank-shared", "lowrank-per-head"])
def test_forward_and_backward_never_allocate_batch_heads_length_squared(monkeypatch, one_thread, combine, form):
    batch_size, heads, length, block = 3, 4, 64, 4096
    monkeypatch.setattr(blocked, "BLOCK_ELEMENTS", block)
    torch.manual_seed(0)
    q, k, v = (torch.randn(batch_size, heads, length, 8, requires_grad=True) for _ in range(3))
    mask_heads = heads if form.endswith("per-head") else 1
    if form.startswith("dense"):
        mask_tensors = [torch.randn(batch_size, mask_heads, length, length, requires_grad=True)]
        mask = LAMMask(combine, "softplus", logits=mask_tensors[0])
    else:
        mask_tensors = [torch.randn(batch_size, mask_heads, length, 4, requires_grad=True) for _ in range(2)]
        mask = LAMMask(combine, "softplus", u=mask_tensors[0], v=mask_tensors[1])
    scores = batch_size * heads * length * length
    largest_input = max(t.numel() for t in (q, *mask_tensors))
    # The additive forward hands SDPA a shared mask whole: B x 1 x L x L (see lamflow.lam.blocked).
    whole_shared_mask = batch_size * length * length if combine == "add" and mask_heads == 1 else 0
    bound = max(block, largest_input, whole_shared_mask)
    assert bound <= scores // heads  # far from B x H x L x L

    def record(path: str) -> LargestAllocation:
        with LargestAllocation() as recorded:
            out = LAM_PATHS[path](q, k, v, mask, None)
            torch.autograd.grad(out, [q, k, v, *mask_tensors], torch.randn_like(out))
        return recorded

    assert record("eager").elements >= scores  # the measurement sees the reference's scores
    fast = record("blocked")
    row_blocks, head_groups = blocked.blocks(heads, length)
    assert len(row_blocks) * len(head_groups) > 1
    assert fast.softmaxes >= batch_size * len(row_blocks) * len(head_groups)  # it saw every backward block
    assert fast.elements <= bound
