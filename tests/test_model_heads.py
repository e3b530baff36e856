"""MultimodalLAMModel, its heads, decoding and losses, on batches from the real loader over contract shards."""
import math

import pytest
import torch

from lamflow.datasets.loader import LoaderConfig, StreamingLoader
from lamflow.lam import LAMConfig
from lamflow.datasets.qvhighlights import QVHighlightsTask
from lamflow.train.config import ModelConfig
from lamflow.train.tasks.moment_head import decode_moments, nms_1d, pool_to_clips
from lamflow.train.tasks.qvhighlights import moment_loss, moment_targets
from lamflow.train.model import MultimodalLAMModel, downsample_stream
from lamflow.train.tasks.spec import HeadFacts
from contract_shards import write_toy_qvhighlights

SMALL = dict(dim=32, depth=2, heads=2, generator_hidden=32, generator_rank=4, dropout=0.0)


def small(downsample=None, **encoder) -> ModelConfig:
    return ModelConfig(encoder=LAMConfig(**{**SMALL, **encoder}), downsample=downsample or {})


def widths(batch, streams) -> dict[str, int]:
    return {name: int(batch["streams"][name].shape[-1]) for name in streams}


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """One collated batch (the batch contract) of 4 toy videos from the real StreamingLoader."""
    toy = write_toy_qvhighlights(tmp_path_factory.mktemp("toy"), videos=4, val_videos=0)
    loader = StreamingLoader(str(toy.shards), QVHighlightsTask(toy.train_annotations), LoaderConfig(batch_size=4), mode="eval")
    return next(iter(loader))


def make_model(batch, **options) -> MultimodalLAMModel:
    torch.manual_seed(0)
    return MultimodalLAMModel(small(**options), widths(batch, ("text", "video", "audio")), ("text", "video", "audio"), "qvhighlights")


def test_embedded_sequence_follows_the_batch_layout_of_the_loader(batch):
    model = make_model(batch)
    x, padding, times, spans = model.embed(batch)
    assert x.shape == (*batch["padding_mask"].shape, 32)
    assert torch.equal(padding, batch["padding_mask"]) and torch.equal(times, batch["timestamps"])
    assert [(name, s.start, s.stop) for name, s in spans.items()] == [tuple(seg) for seg in batch["segments"]]


def test_downsampling_a_stream_averages_tokens_and_times_and_keeps_padding():
    features = torch.arange(10.0).view(1, 5, 2)
    padding = torch.tensor([[False, False, False, True, True]])
    times = torch.tensor([[0.0, 0.1, 0.2, 0.0, 0.0]])
    pooled, pooled_padding, pooled_times = downsample_stream(features, padding, times, 2)
    assert pooled.tolist() == [[[1.0, 2.0], [4.0, 5.0], [0.0, 0.0]]]  # padded tokens excluded from the mean
    assert pooled_padding.tolist() == [[False, False, True]]
    assert pooled_times[0, :2].tolist() == pytest.approx([0.05, 0.2])


def test_audio_downsampling_shortens_the_sequence_but_not_the_time_axis(batch):
    model = make_model(batch, downsample={"audio": 4})
    _, padding, times, spans = model.embed(batch)
    audio_tokens = batch["streams"]["audio"].shape[1]
    assert spans["audio"].stop - spans["audio"].start == math.ceil(audio_tokens / 4)
    assert times[:, spans["audio"]].max() == pytest.approx(batch["stream_timestamps"]["audio"].max().item(), abs=1.0)


def test_saliency_is_averaged_per_two_second_clip_and_empty_clips_take_the_nearest_token():
    scores = torch.tensor([[1.0, 3.0, 10.0, 0.0]])
    times = torch.tensor([[0.5, 1.5, 4.5, 0.0]])  # clip 0: two tokens, clip 1: none, clip 2: one
    padding = torch.tensor([[False, False, False, True]])
    clips = pool_to_clips(scores, times, padding, num_clips=3)
    assert clips.tolist() == [[2.0, 3.0, 10.0]]  # clip 1 (2-4 s) is nearest to the token at 1.5 s (3.0)


def test_nms_keeps_the_best_window_and_drops_overlapping_ones():
    windows = torch.tensor([[0.0, 10.0], [1.0, 10.0], [20.0, 30.0], [0.0, 4.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert nms_1d(windows, scores, iou_threshold=0.7, keep=10) == [0, 2, 3]
    assert nms_1d(windows, scores, iou_threshold=0.7, keep=2) == [0, 2]


def test_decoded_moments_are_ranked_windows_inside_the_video_with_one_saliency_per_clip(batch):
    model = make_model(batch).eval()
    with torch.no_grad():
        outputs = model(batch)
    clip_counts = (~batch["saliency_padding"]).sum(1).tolist()
    windows, saliency = decode_moments(outputs, batch["duration"], clip_counts, num_windows=10, nms_iou=0.7)
    for item_windows, item_saliency, duration, clips in zip(windows, saliency, batch["duration"], clip_counts):
        scores = [w[2] for w in item_windows]
        assert 1 <= len(item_windows) <= 10 and scores == sorted(scores, reverse=True)
        assert all(0.0 <= start <= end <= duration for start, end, _ in item_windows)
        assert len(item_saliency) == clips == math.ceil(duration / 2)


def test_tokens_inside_a_window_are_foreground_and_a_short_window_claims_its_nearest_token():
    times = torch.tensor([[0.5, 1.5, 2.5, 3.5, 4.5, 5.5]])
    padding = torch.zeros(1, 6, dtype=torch.bool)
    windows = [torch.tensor([[1.0, 3.0], [5.0, 5.2]])]
    foreground, assigned = moment_targets(times, padding, windows)
    assert foreground.tolist() == [[False, True, True, False, False, True]]
    assert assigned[0, 1].tolist() == [1.0, 3.0]
    assert assigned[0, 5].tolist() == pytest.approx([5.0, 5.2])


def test_every_loss_term_is_finite_and_reaches_every_head(batch):
    model = make_model(batch)
    terms = moment_loss(model(batch), batch, model.config)
    assert set(terms) == {"loss", "foreground", "offset", "giou", "saliency"}
    assert all(torch.isfinite(v) for v in terms.values())
    terms["loss"].backward()
    head = model.head
    for module in (head.foreground, head.offsets, head.saliency, model.projections["text"], model.projections["audio"]):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@pytest.mark.parametrize("mask", ["none", "single", "multi"])
def test_the_mask_mode_comes_from_the_config_and_vanilla_has_no_generators(batch, mask):
    model = make_model(batch, mask=mask)
    assert model.encoder.cfg.mask == mask
    assert len(model.encoder.generators) == {"none": 0, "single": 1, "multi": 2}[mask]
    assert model(batch)["foreground"].shape == batch["stream_padding"]["video"].shape


def test_classification_head_gives_one_logit_per_class(batch):
    model = MultimodalLAMModel(small(), widths(batch, ("video", "audio")), ("video", "audio"), "classification", HeadFacts(num_classes=5))
    assert model(batch)["logits"].shape == (4, 5)


def test_model_refuses_streams_without_a_size_or_a_moment_task_without_video(batch):
    with pytest.raises(ValueError, match="no size for stream"):
        MultimodalLAMModel(small(), {"video": 16}, ("video", "audio"), "qvhighlights")
    with pytest.raises(ValueError, match="anchors moments on the 'video' stream"):
        MultimodalLAMModel(small(), {"audio": 8}, ("audio",), "qvhighlights")
