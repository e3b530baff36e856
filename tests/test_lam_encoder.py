"""LAMEncoder behaviour (issue 2, item 4): modes, generators, init rule, padding, per-layer masks, learning."""
import itertools

import pytest
import torch

from lamflow.lam import LAMConfig, LAMEncoder
from lamflow.lam.attention import eager_lam_attention
from lamflow.lam.generator import LAMMask

DIM, HEADS, MAX_LEN = 32, 4, 24
LAM_MODES = list(itertools.product(["single", "multi"], ["mul", "add"], ["fixed", "dynamic"]))


def make_encoder(seed: int = 0, **overrides) -> LAMEncoder:
    torch.manual_seed(seed)
    options = dict(dim=DIM, depth=2, heads=HEADS, max_len=MAX_LEN, dropout=0.0, attention="eager", generator_hidden=32)
    return LAMEncoder(LAMConfig(**{**options, **overrides})).eval()


def randomise_generators(encoder: LAMEncoder, std: float = 0.3) -> None:
    """Move the generators away from their identity init so masks actually differ from 1 / 0."""
    torch.manual_seed(123)
    with torch.no_grad():
        for p in encoder.generators.parameters():
            p.normal_(0.0, std)


def readout(hidden: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """A scalar with non-trivial gradients (a plain sum of LayerNorm outputs has none)."""
    direction = torch.linspace(-1.0, 1.0, hidden.shape[-1])
    return (hidden[~pad] * direction).sum()


def inputs(batch=2, length=12, pad_from=(12, 8), seed=1):
    torch.manual_seed(seed)
    x = torch.randn(batch, length, DIM)
    pad = torch.arange(length)[None, :] >= torch.tensor(pad_from)[:, None]
    return x, pad


@pytest.mark.parametrize("mask, combine, generator", LAM_MODES + [("none", "mul", "fixed")])
def test_every_mode_runs_forward_and_backward(mask, combine, generator):
    encoder = make_encoder(mask=mask, combine=combine, generator=generator).train()
    x, pad = inputs()
    out = encoder(x, key_padding_mask=pad)
    assert out.hidden.shape == x.shape and torch.isfinite(out.hidden).all()
    readout(out.hidden, pad).backward()
    assert all(p.grad is not None and p.grad.abs().max() > 1e-6 for p in encoder.blocks.parameters())


@pytest.mark.parametrize("mask, combine, generator", LAM_MODES)
@pytest.mark.parametrize("gate", ["none", "sigmoid", "softplus"])
@pytest.mark.parametrize("attention", ["eager", "auto"])
def test_lam_at_init_equals_vanilla_with_the_same_weights(mask, combine, generator, gate, attention):
    lam = make_encoder(seed=0, mask=mask, combine=combine, generator=generator, mask_gate=gate, attention=attention)
    vanilla = make_encoder(seed=99, mask="none")
    result = vanilla.load_state_dict(lam.state_dict(), strict=False)
    assert result.missing_keys == []
    assert result.unexpected_keys and all(k.startswith("generators.") for k in result.unexpected_keys)
    x, pad = inputs()
    with torch.no_grad():
        real = ~pad
        torch.testing.assert_close(lam(x, pad).hidden[real], vanilla(x, pad).hidden[real], atol=1e-5, rtol=1e-5)


def test_fixed_generator_rejects_inputs_longer_than_max_len():
    encoder = make_encoder(mask="multi", generator="fixed", max_len=16)
    with pytest.raises(ValueError, match=r"input length 20 exceeds .*max_len=16"):
        encoder(torch.randn(1, 20, DIM))


def test_dynamic_generator_works_beyond_the_training_length():
    encoder = make_encoder(mask="single", generator="dynamic", combine="mul", max_len=8).train()
    optimiser = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    x_train, target = torch.randn(2, 4, 8, DIM).unbind(0)
    for _ in range(3):
        optimiser.zero_grad()
        (encoder(x_train).hidden - target).pow(2).mean().backward()
        optimiser.step()
    encoder.eval()
    x_long = torch.randn(2, 40, DIM)
    with torch.no_grad():
        long = encoder(x_long, return_masks=True)
        short = encoder(x_long[:, :8], return_masks=True)
    assert long.hidden.shape == (2, 40, DIM) and torch.isfinite(long.hidden).all()
    assert long.masks[0].shape == (2, 40, 40)
    # Length-agnostic: M[i, j] depends on tokens i and j only, not on the sequence length.
    torch.testing.assert_close(long.masks[0][:, :8, :8], short.masks[0])
    assert not torch.allclose(short.masks[0], torch.ones_like(short.masks[0]))


@pytest.mark.parametrize("mask, combine, generator", LAM_MODES + [("none", "mul", "fixed")])
def test_appended_padding_leaves_real_outputs_and_masks_unchanged(mask, combine, generator):
    encoder = make_encoder(mask=mask, combine=combine, generator=generator, mask_per_head=generator == "dynamic")
    randomise_generators(encoder)
    x, pad = inputs()
    garbage = 1e3 * torch.randn(2, 6, DIM)
    x_long = torch.cat([x, garbage], dim=1)
    pad_long = torch.cat([pad, torch.ones(2, 6, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        short, long = encoder(x, pad, return_masks=True), encoder(x_long, pad_long, return_masks=True)
    real = ~pad
    torch.testing.assert_close(long.hidden[:, :12][real], short.hidden[real], atol=1e-5, rtol=1e-5)
    for m_short, m_long in zip(short.masks, long.masks):
        torch.testing.assert_close(m_long[..., :12, :12], m_short, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("combine", ["mul", "add"])
def test_non_finite_garbage_in_padded_positions_does_not_leak(combine):
    encoder = make_encoder(mask="multi", combine=combine, generator="fixed")
    randomise_generators(encoder)
    x, pad = inputs()
    poisoned = x.clone()
    poisoned[pad] = float("nan")
    poisoned[1, -1] = float("inf")
    with torch.no_grad():
        clean, dirty = encoder(x, pad).hidden, encoder(poisoned, pad).hidden
    assert torch.isfinite(dirty[~pad]).all()
    torch.testing.assert_close(dirty[~pad], clean[~pad])


@pytest.mark.parametrize("combine", ["mul", "add"])
def test_padded_keys_receive_exactly_zero_attention_whatever_the_mask(combine):
    # v = identity makes the attention output equal to the attention matrix itself.
    batch, heads, length = 2, 2, 6
    torch.manual_seed(0)
    q, k = torch.randn(2, batch, heads, length, 8).unbind(0)
    v = torch.eye(length).expand(batch, heads, length, length)
    pad = torch.zeros(batch, length, dtype=torch.bool)
    pad[0, 4:] = True
    # A mask that tries hard to un-mask the padded keys: huge on padded columns, negative elsewhere
    # (in mul mode a negative M would turn a -inf padding score into +inf/nan if applied first).
    logits = torch.full((batch, 1, length, length), -3.0)
    logits[..., 4:] = 1e4
    attention = eager_lam_attention(q, k, v, LAMMask(combine, "none", logits=logits), pad)
    assert torch.isfinite(attention).all()
    assert (attention[0, :, :, 4:] == 0).all()
    torch.testing.assert_close(attention.sum(-1), torch.ones(batch, heads, length))


def test_fully_padded_sample_is_rejected_with_a_clear_error():
    encoder = make_encoder(mask="multi")
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[1] = True
    with pytest.raises(ValueError, match="every position of a sample as padding"):
        encoder(torch.randn(2, 5, DIM), pad)


def test_masks_are_returned_per_layer():
    x, pad = inputs()
    single = make_encoder(mask="single", depth=3)
    multi = make_encoder(mask="multi", depth=3, generator="dynamic", mask_per_head=True)
    randomise_generators(single)
    randomise_generators(multi)
    with torch.no_grad():
        single_masks = single(x, pad, return_masks=True).masks
        multi_masks = multi(x, pad, return_masks=True).masks
        assert multi(x, pad).masks == []  # only when asked
        assert make_encoder(mask="none")(x, pad, return_masks=True).masks == []
    assert len(single_masks) == 3 and all(m is single_masks[0] for m in single_masks)
    assert single_masks[0].shape == (2, 12, 12)
    assert len(multi_masks) == 3 and all(m.shape == (2, HEADS, 12, 12) for m in multi_masks)
    assert not torch.allclose(multi_masks[0], multi_masks[1])


@pytest.mark.parametrize("generator", ["fixed", "dynamic"])
def test_every_generator_receives_gradients(generator):
    encoder = make_encoder(mask="multi", generator=generator, depth=2).train()
    optimiser = torch.optim.SGD(encoder.parameters(), lr=0.1)
    x, pad = inputs()
    for _ in range(2):  # step 1 moves the zero-initialised output layer, after which all layers get gradients
        optimiser.zero_grad()
        readout(encoder(x, pad).hidden, pad).backward()
        optimiser.step()
    for generator_module in encoder.generators:
        for name, p in generator_module.named_parameters():
            assert p.grad is not None and p.grad.abs().max() > 1e-6, name


def distractor_task(generator: str, combine: str):
    """Position 0 holds a marked distractor token; the target is the frozen encoder's output computed as if
    position 0 were padding. Only the generator trains, so only the mask can remove the distractor."""
    encoder = make_encoder(depth=1, heads=2, mask="single", combine=combine, generator=generator, max_len=8).train()
    torch.manual_seed(5)
    x = torch.randn(32, 8, DIM)
    x[:, 0] = 0.0
    x[:, 0, 0] = 4.0
    distractor_as_padding = torch.zeros(32, 8, dtype=torch.bool)
    distractor_as_padding[:, 0] = True
    with torch.no_grad():
        target = encoder(x, distractor_as_padding).hidden[:, 1:]
    for p in encoder.blocks.parameters():
        p.requires_grad_(False)
    optimiser = torch.optim.Adam(encoder.generators.parameters(), lr=3e-2)

    def loss_and_mask():
        out = encoder(x, return_masks=True)
        return (out.hidden[:, 1:] - target).pow(2).mean(), out.masks[0]

    loss_before, mask_before = loss_and_mask()
    for _ in range(25):
        optimiser.zero_grad()
        loss_and_mask()[0].backward()
        optimiser.step()
    loss_after, mask_after = loss_and_mask()
    return loss_before.item(), loss_after.item(), mask_before.detach(), mask_after.detach()


@pytest.mark.parametrize("generator", ["fixed", "dynamic"])
def test_training_the_additive_mask_learns_to_suppress_the_distractor_key(generator):
    loss_before, loss_after, mask_before, mask_after = distractor_task(generator, "add")
    assert torch.equal(mask_before, torch.zeros_like(mask_before))
    assert loss_after < 0.2 * loss_before
    to_distractor, to_others = mask_after[:, 1:, 0].mean(), mask_after[:, 1:, 1:].mean()
    assert to_distractor < to_others - 1.0


def test_training_the_multiplicative_mask_changes_it_and_lowers_the_loss():
    loss_before, loss_after, mask_before, mask_after = distractor_task("dynamic", "mul")
    assert torch.equal(mask_before, torch.ones_like(mask_before))
    assert loss_after < 0.8 * loss_before
    assert (mask_after - mask_before).abs().max() > 0.05


@pytest.mark.parametrize("generator_input", ["hidden", "input"])
def test_multi_layer_generators_read_the_configured_input(generator_input):
    encoder = make_encoder(mask="multi", generator_input=generator_input)
    randomise_generators(encoder)
    x, _ = inputs()
    with torch.no_grad():
        masks = encoder(x, return_masks=True).masks
        from_input = [generator(x).values().squeeze(1) for generator in encoder.generators]
    torch.testing.assert_close(masks[0], from_input[0])  # the hidden state entering layer 0 is the input
    assert torch.allclose(masks[1], from_input[1]) == (generator_input == "input")


def test_malformed_inputs_raise_clear_errors():
    encoder = make_encoder(mask="multi")
    with pytest.raises(ValueError, match=rf"x must have shape \(batch, length, {DIM}\), got \(2, 5, 7\)"):
        encoder(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match=r"key_padding_mask must be a bool tensor of shape \(2, 5\)"):
        encoder(torch.randn(2, 5, DIM), torch.zeros(2, 5))
