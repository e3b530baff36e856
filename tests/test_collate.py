"""Collation into one sequence (batch contract) and length bucketing, on hand-made items."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lamflow.datasets.bucketing import batched, bucket_batches
from lamflow.datasets.collate import collate_streams, total_tokens

STREAMS = ("text", "video", "audio")


def item(sample_id, text, video_ts, audio_ts, duration=2.0, dims=(2, 3, 1)):
    """Token values encode (stream, position) so misplaced tokens show up."""
    def tokens(count, dim, base):
        return np.arange(count * dim, dtype=np.float32).reshape(count, dim) + base

    return {
        "key": f"video-{sample_id}",
        "sample_id": sample_id,
        "duration": duration,
        "streams": {
            "text": tokens(text, dims[0], 100),
            "video": tokens(len(video_ts), dims[1], 200).astype(np.float16),
            "audio": tokens(len(audio_ts), dims[2], 300),
        },
        "timestamps": {
            "text": np.zeros(text, np.float32),
            "video": np.asarray(video_ts, np.float32),
            "audio": np.asarray(audio_ts, np.float32),
        },
    }


@pytest.fixture
def batch():
    first = item("q1", text=2, video_ts=[0.0, 0.5, 1.0], audio_ts=[], duration=1.5)  # no audio track
    second = item("q2", text=1, video_ts=[0.0], audio_ts=[0.0, 0.1, 0.2, 0.3], duration=0.4)
    return collate_streams([first, second], STREAMS)


def test_segments_place_the_stream_blocks_in_configured_order(batch):
    assert batch["segments"] == [("text", 0, 2), ("video", 2, 5), ("audio", 5, 9)]
    assert batch["padding_mask"].shape == batch["modality_ids"].shape == batch["timestamps"].shape == (2, 9)


def test_padding_mask_marks_exactly_the_padded_positions(batch):
    expected = torch.tensor([
        # text  | video        | audio
        [0, 0,    0, 0, 0,       1, 1, 1, 1],
        [0, 1,    0, 1, 1,       0, 0, 0, 0],
    ], dtype=torch.bool)
    assert torch.equal(batch["padding_mask"], expected)
    assert torch.equal(batch["stream_padding"]["video"], expected[:, 2:5])


def test_modality_ids_hold_the_stream_index_over_its_whole_block(batch):
    assert batch["modality_ids"].dtype == torch.long
    assert torch.equal(batch["modality_ids"], torch.tensor([[0, 0, 1, 1, 1, 2, 2, 2, 2]] * 2))


def test_timestamps_keep_streams_of_different_rates_aligned_in_seconds(batch):
    expected = torch.tensor([
        [0, 0, 0.0, 0.5, 1.0, 0, 0, 0, 0],
        [0, 0, 0.0, 0, 0, 0.0, 0.1, 0.2, 0.3],
    ])
    assert torch.allclose(batch["timestamps"], expected)
    assert torch.allclose(batch["stream_timestamps"]["audio"][1], torch.tensor([0.0, 0.1, 0.2, 0.3]))


def test_stream_values_are_float32_zero_padded_in_place(batch):
    video = batch["streams"]["video"]
    assert video.dtype == torch.float32 and video.shape == (2, 3, 3)
    assert torch.equal(video[0], torch.arange(9.0).reshape(3, 3) + 200)
    assert torch.equal(video[1, 1:], torch.zeros(2, 3))
    assert batch["streams"]["audio"].shape == (2, 4, 1)
    assert batch["keys"] == ["video-q1", "video-q2"] and batch["sample_ids"] == ["q1", "q2"]
    assert batch["duration"].tolist() == pytest.approx([1.5, 0.4])


def test_max_stream_tokens_keeps_the_first_tokens_of_a_stream():
    items = [item("q", text=2, video_ts=[0.0, 0.5, 1.0], audio_ts=[0.0, 0.1, 0.2, 0.3])]
    batch = collate_streams(items, STREAMS, {"audio": 2})
    assert batch["segments"][-1] == ("audio", 5, 7)
    assert torch.allclose(batch["stream_timestamps"]["audio"], torch.tensor([[0.0, 0.1]]))
    assert total_tokens(items[0], STREAMS, {"audio": 2}) == 7


def test_a_missing_stream_or_mixed_feature_sizes_are_clear_errors():
    plain = item("q1", 1, [0.0], [0.0])
    with pytest.raises(KeyError, match="no stream 'depth'.*LoaderConfig.streams"):
        collate_streams([plain], ("depth",))
    with pytest.raises(ValueError, match="stream 'video': feature sizes \\[3, 5\\]"):
        collate_streams([plain, item("q2", 1, [0.0], [0.0], dims=(2, 5, 1))], STREAMS)


def padding_fraction(batches):
    padded = total = 0
    for group in batches:
        lengths = [total_tokens(entry, STREAMS) for entry in group]
        padded += max(lengths) * len(lengths) - sum(lengths)
        total += max(lengths) * len(lengths)
    return padded / total


def test_length_bucketing_reduces_padding_and_keeps_every_item_once():
    rng = np.random.default_rng(0)
    items = [item(f"q{i}", int(rng.integers(1, 20)), np.arange(int(rng.integers(1, 60))) * 0.5,
                  np.arange(int(rng.integers(0, 300))) * 0.1) for i in range(97)]
    plain = list(batched(items, 8))
    bucketed = list(bucket_batches(items, 8, 32, lambda entry: total_tokens(entry, STREAMS), np.random.default_rng(1)))
    assert padding_fraction(bucketed) < 0.5 * padding_fraction(plain)
    assert sorted(entry["sample_id"] for group in bucketed for entry in group) == sorted(e["sample_id"] for e in items)
    # full batches until the end, then one partial: ceil(n / batch_size) batches, as the loader plans
    assert [len(group) for group in bucketed] == [8] * 12 + [1]
    # a collated bucketed batch really carries less padding than a plain one
    bucketed_mask = torch.cat([collate_streams(g, STREAMS)["padding_mask"].flatten() for g in bucketed])
    plain_mask = torch.cat([collate_streams(g, STREAMS)["padding_mask"].flatten() for g in plain])
    assert bucketed_mask.float().mean() < plain_mask.float().mean()


def test_with_a_fixed_layout_a_token_sits_at_the_same_column_whatever_the_batch_holds():
    # The "fixed" mask generator gives column j its own learned meaning, so column j must be the same
    # stream and slot in every batch. Dynamic padding moves the 2nd video token when the longest text changes.
    short = item("short", text=1, video_ts=[0.0, 1.0, 2.0], audio_ts=[0.0])
    long_text = item("long", text=4, video_ts=[0.0], audio_ts=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    layout = {"text": 5, "video": 3, "audio": 4}

    def column_of_second_video_token(items, fixed):
        batch = collate_streams(items, STREAMS, fixed_lengths=fixed)
        video_start = dict((name, start) for name, start, _ in batch["segments"])["video"]
        return video_start + 1, batch

    dynamic = {column_of_second_video_token(group, None)[0] for group in ([short], [short, long_text])}
    assert len(dynamic) == 2  # the same token moved: its mask column would mean something else
    columns, batches = zip(*(column_of_second_video_token(group, layout) for group in ([short], [short, long_text])))
    assert columns == (6, 6)
    assert [b["segments"] for b in batches] == [[("text", 0, 5), ("video", 5, 8), ("audio", 8, 12)]] * 2
    # Longer streams are cut (first tokens kept) and the rest padded.
    assert batches[1]["stream_padding"]["audio"][1].tolist() == [False] * 4
    assert batches[1]["streams"]["video"][0, 1, 0].item() == 203  # the short item's 2nd video token, in place
