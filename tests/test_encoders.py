"""CLIP image/text encoder (tiny registered open_clip config), audio tokenizer and extraction settings."""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time

import numpy as np
import pytest
import torch

from lamflow.pipelines.audio_tokens import AudioTokenizer
from lamflow.pipelines.clip_encoder import ClipEncoder, ClipWeightsError, register_lamflow_models
from lamflow.pipelines.settings import ExtractSettings


@pytest.fixture(scope="module")
def tiny():
    return ClipEncoder("lamflow-tiny", "none")


def random_frames(n, size=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# --- CLIP image tower -------------------------------------------------------------------------------

def test_tiny_model_is_registered_idempotently_with_open_clip():
    import open_clip

    register_lamflow_models()
    register_lamflow_models()
    assert open_clip.list_models().count("lamflow-tiny") == 1


def test_frames_encode_to_unit_vectors_of_embed_dim(tiny):
    features = tiny.encode_frames(random_frames(3))
    assert (tiny.image_size, tiny.embed_dim) == (64, 64)
    assert features.shape == (3, 64) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    assert tiny.encode_frames(random_frames(0)).shape == (0, 64)


def test_same_frames_give_same_features_and_different_frames_differ(tiny):
    frames = random_frames(2)
    first, again = tiny.encode_frames(frames), tiny.encode_frames(frames.copy())
    np.testing.assert_array_equal(first, again)
    assert np.abs(first[0] - first[1]).max() > 1e-3
    # A batch is encoded frame by frame: batching does not change a frame's features.
    np.testing.assert_allclose(tiny.encode_frames(frames[:1])[0], first[0], atol=1e-5)


def test_random_init_is_seeded_identically_for_every_load_and_flagged_loudly(caplog):
    with caplog.at_level(logging.WARNING):
        a = ClipEncoder("lamflow-tiny", "none")
    b = ClipEncoder("lamflow-tiny", "none")
    assert "RANDOM weights" in caplog.text
    frames = random_frames(2, seed=3)
    np.testing.assert_array_equal(a.encode_frames(frames), b.encode_frames(frames))
    prov = a.provenance()
    assert prov["random_init"] is True and prov["weights_sha256"] is None and prov["normalisation"] == "l2"
    assert prov["model"] == "lamflow-tiny" and prov["quick_gelu"] is False


def test_wrong_frame_shape_is_rejected_with_the_expected_shape(tiny):
    with pytest.raises(ValueError, match=r"\(B, 64, 64, 3\)"):
        tiny.encode_frames(random_frames(1, size=32))


def test_local_checkpoint_loads_the_saved_weights_and_records_sha256(tiny, tmp_path):
    trained = ClipEncoder("lamflow-tiny", "none")
    with torch.no_grad():  # move the weights away from the seeded random init: a real "other" checkpoint
        for p in trained.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / "tiny.pt"
    torch.save(trained.model.state_dict(), path)
    loaded = ClipEncoder("lamflow-tiny", str(path))
    frames = random_frames(2, seed=5)
    np.testing.assert_allclose(loaded.encode_frames(frames), trained.encode_frames(frames), atol=1e-6)
    assert np.abs(loaded.encode_frames(frames) - tiny.encode_frames(frames)).max() > 1e-3
    prov = loaded.provenance()
    assert prov["random_init"] is False and prov["pretrained"] == str(path)
    assert prov["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_checkpoint_of_another_architecture_fails_clearly(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"not": torch.zeros(1)}, path)
    with pytest.raises(ClipWeightsError, match="does not load into 'lamflow-tiny'"):
        ClipEncoder("lamflow-tiny", str(path))


def test_openai_weights_offline_fail_fast_with_advice_to_pass_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ClipWeightsError, match="local path"):
        ClipEncoder("ViT-B-32-quickgelu", "openai")
    assert time.monotonic() - started < 20


def test_unknown_model_and_unknown_weights_name_the_value():
    with pytest.raises(ClipWeightsError, match="no-such-model"):
        ClipEncoder("no-such-model")
    with pytest.raises(ClipWeightsError, match="missing.pt"):
        ClipEncoder("lamflow-tiny", "/nowhere/missing.pt")


def test_default_model_records_quickgelu():
    encoder = ClipEncoder("ViT-B-32-quickgelu", "none")
    prov = encoder.provenance()
    assert prov["quick_gelu"] is True and prov["image_size"] == 224 and prov["embed_dim"] == 512


# --- CLIP text tower --------------------------------------------------------------------------------

def test_texts_give_per_token_and_pooled_embeddings_with_token_counts(tiny):
    texts = ["a dog", "a man rides a horse along the beach at sunset"]
    per_token, pooled, counts = tiny.encode_texts(texts)
    # counts include the start and end tokens
    assert counts[0] == 4 and counts[1] > counts[0]
    assert per_token.shape == (2, max(counts), 64) and pooled.shape == (2, 64)
    for i, n in enumerate(counts):
        np.testing.assert_allclose(per_token[i, n - 1], pooled[i], atol=1e-5)  # pooled = end token
        np.testing.assert_allclose(np.linalg.norm(per_token[i, :n], axis=1), 1.0, atol=1e-5)
        assert not per_token[i, n:].any()  # padding rows are zero
    assert np.abs(pooled[0] - pooled[1]).max() > 1e-3


def test_a_text_encodes_the_same_alone_or_next_to_longer_texts(tiny):
    alone = tiny.encode_texts(["a dog"])
    together = tiny.encode_texts(["a dog", "a much longer caption about a dog in a park"])
    np.testing.assert_allclose(together[1][0], alone[1][0], atol=1e-5)
    np.testing.assert_allclose(together[0][0, : alone[2][0]], alone[0][0], atol=1e-5)


# --- audio tokens -----------------------------------------------------------------------------------

def tone(hz, seconds, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.mark.parametrize("n_samples", [0, 1, 1599, 1600, 1601, 48000, 48123])
def test_one_token_per_started_hop_stamped_at_the_hop_start(n_samples):
    tokens, ts = AudioTokenizer(ExtractSettings())(np.zeros(n_samples, np.float32))
    expected = math.ceil(n_samples / 1600)
    assert tokens.shape == (expected, 64) and tokens.dtype == np.float32
    np.testing.assert_allclose(ts, np.arange(expected) * 0.1, atol=1e-6)
    assert np.isfinite(tokens).all()  # digital silence stays finite (log floor)


def test_higher_tone_moves_energy_to_higher_mel_bins():
    tokenizer = AudioTokenizer(ExtractSettings())
    low, _ = tokenizer(tone(300, 1.0))
    high, _ = tokenizer(tone(3000, 1.0))
    assert np.argmax(high.mean(0)) > np.argmax(low.mean(0)) + 10


def test_chunked_computation_equals_whole_signal():
    wave = np.random.default_rng(0).standard_normal(16000 * 5 + 333).astype(np.float32)
    whole, _ = AudioTokenizer(ExtractSettings(), chunk_tokens=10_000)(wave)
    chunked, _ = AudioTokenizer(ExtractSettings(), chunk_tokens=7)(wave)
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


def test_other_hops_and_mel_counts():
    tokens, ts = AudioTokenizer(ExtractSettings(sample_rate=8000, audio_hop=0.02, n_mels=40))(tone(440, 1.0, 8000))
    assert tokens.shape == (50, 40)
    np.testing.assert_allclose(ts[:3], [0.0, 0.02, 0.04], atol=1e-6)
    assert AudioTokenizer(ExtractSettings()).provenance()["timestamps"] == "start of hop"


# --- settings ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "field,value",
    [("fps", 0), ("frame_rule", "end"), ("sample_rate", 12.5), ("audio_hop", 0.00001), ("n_mels", 0),
     ("dtype", "int8"), ("frame_batch", 0), ("device", "tpu"), ("audio_model", "")],
)
def test_invalid_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(ExtractSettings(), **{field: value}).validate()


def test_settings_round_trip_through_json_and_reject_unknown_keys():
    settings = ExtractSettings(fps=2.0, frame_rule="middle", clip_model="lamflow-tiny", dtype="float32")
    assert ExtractSettings.from_json(settings.to_json()) == settings
    with pytest.raises(ValueError, match="frame_rate"):
        ExtractSettings.from_json({"frame_rate": 2})
