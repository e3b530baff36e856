"""Pretrained audio encoders (--audio-model) through the real loading code, with small random checkpoints
saved here in the published layouts: a torchaudio wav2vec2 model and a CNN14-shaped PANNs state dict."""
import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from lamflow.pipelines import audio_models
from lamflow.pipelines.audio_models import AudioModelError, load_audio_encoder, wav2vec2_bundles
from lamflow.pipelines.cnn14 import PUBLISHED_WIDTHS, Cnn14, Cnn14Config
from lamflow.pipelines.extract import run_record
from lamflow.pipelines.featurize import featurize_video, load_encoders
from lamflow.pipelines.settings import ExtractSettings

# wav2vec2's published geometry (frames every 320 samples, 400-sample receptive field), 16 channels wide.
TINY_WAV2VEC2 = dict(
    extractor_mode="group_norm", extractor_conv_layer_config=[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2,
    extractor_conv_bias=False, encoder_embed_dim=32, encoder_projection_dropout=0.0, encoder_pos_conv_kernel=16,
    encoder_pos_conv_groups=4, encoder_num_layers=2, encoder_num_heads=2, encoder_attention_dropout=0.0,
    encoder_ff_interm_features=64, encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=False,
    encoder_layer_drop=0.0, aux_num_out=None,
)
TINY_CNN14 = Cnn14Config(widths=(4, 8, 8, 8, 8, 16), embedding_dim=16, classes=5)


@dataclasses.dataclass
class NotATensor:
    value: int


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def wav2vec2_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = torchaudio.models.wav2vec2_model(**TINY_WAV2VEC2)
    path = tmp_path_factory.mktemp("w2v") / "tiny_wav2vec2.pt"
    torch.save({"config": TINY_WAV2VEC2, "state_dict": model.state_dict(), "sample_rate": 16000}, path)
    return path


@pytest.fixture(scope="module")
def cnn14_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = Cnn14(TINY_CNN14)
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # not the identity
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    path = tmp_path_factory.mktemp("cnn14") / "Cnn14_tiny.pth"
    torch.save({"model": model.state_dict(), "iteration": 0}, path)  # the layout of the official Cnn14_mAP=0.431.pth
    return path


def noise(seconds: float, rate: int) -> np.ndarray:
    return (np.random.default_rng(0).standard_normal(round(seconds * rate)) * 0.1).astype(np.float32)


def test_wav2vec2_checkpoint_gives_last_layer_frames_averaged_per_hop(wav2vec2_checkpoint):
    encoder = load_audio_encoder(ExtractSettings(audio_model=str(wav2vec2_checkpoint), audio_hop=0.1))
    wave = noise(2.05, 16000)  # 20.5 hops: the last one partial
    tokens, stamps = encoder(wave)
    assert tokens.shape == (21, 32) and tokens.dtype == np.float32
    np.testing.assert_allclose(stamps, np.arange(21) * 0.1, atol=1e-6)
    # The specification, computed directly: frame j is centred on sample 320 j (silence outside the wave),
    # and token i averages the frames centred in [1600 i, 1600 (i + 1)).
    model = torchaudio.models.wav2vec2_model(**TINY_WAV2VEC2)
    model.load_state_dict(torch.load(wav2vec2_checkpoint, weights_only=True)["state_dict"])
    model.eval()
    frames_needed = -(-len(wave) // 320)
    padded = torch.zeros((frames_needed - 1) * 320 + 400)
    padded[200 : 200 + len(wave)] = torch.from_numpy(wave)
    with torch.inference_mode():
        frames = model.encoder(model.feature_extractor(padded[None], None)[0], None)[0]
    assert len(frames) == frames_needed
    expected = torch.stack([frames[5 * i : 5 * i + 5].mean(0) for i in range(21)])
    np.testing.assert_allclose(tokens, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_audio_longer_than_the_model_context_is_encoded_window_by_window(wav2vec2_checkpoint, monkeypatch):
    settings = ExtractSettings(audio_model=str(wav2vec2_checkpoint), audio_hop=0.1)
    wave = noise(1.23, 16000)
    one_window, _ = load_audio_encoder(settings)(wave)
    monkeypatch.setattr(audio_models, "CONTEXT_SECONDS", 0.5)
    encoder = load_audio_encoder(settings)
    assert encoder.hops_per_window == 5 and encoder.provenance()["context_seconds"] == pytest.approx(0.5)
    windows, _ = encoder(wave)
    assert windows.shape == one_window.shape == (13, 32) and np.isfinite(windows).all()
    assert not np.allclose(windows, one_window)  # each 0.5-s window saw only its own audio


def test_hop_must_be_whole_wav2vec2_frames(wav2vec2_checkpoint):
    with pytest.raises(AudioModelError, match=r"audio_hop 0.05 s is 800 samples, not a whole number of .* frames "
                                              r"\(320 samples = 0.02 s\); pass e.g. --audio-hop 0.02 or 0.1"):
        load_audio_encoder(ExtractSettings(audio_model=str(wav2vec2_checkpoint), audio_hop=0.05))


def test_cnn14_state_dict_loads_with_the_published_names_and_embeds_each_hop(cnn14_checkpoint):
    state = torch.load(cnn14_checkpoint, weights_only=True)["model"]
    assert {"spectrogram_extractor.stft.conv_real.weight", "logmel_extractor.melW", "bn0.running_mean",
            "conv_block6.bn2.weight", "fc1.weight", "fc_audioset.bias"} <= set(state)
    assert set(state) == set(Cnn14().state_dict())  # the published model has exactly these names
    encoder = load_audio_encoder(ExtractSettings(audio_model=str(cnn14_checkpoint), sample_rate=32000, audio_hop=2.0))
    wave = noise(5.0, 32000)  # two whole 2-s hops and a 1-s one
    tokens, stamps = encoder(wave)
    assert tokens.shape == (3, 16) and list(stamps) == [0.0, 2.0, 4.0]
    model = Cnn14.from_state_dict(state).eval()
    with torch.inference_mode():
        alone = [model.embed(torch.from_numpy(wave[start : start + 64000])[None])[0] for start in (0, 64000, 128000)]
    np.testing.assert_allclose(tokens, torch.stack(alone).numpy(), rtol=1e-4, atol=1e-5)
    provenance = encoder.provenance()
    assert provenance["weights_sha256"] == sha256(cnn14_checkpoint)
    assert (provenance["hop_seconds"], provenance["sample_rate"], provenance["dim"]) == (2.0, 32000, 16)


def test_cnn14_refuses_hops_shorter_than_its_poolings_and_audio_at_another_rate(cnn14_checkpoint):
    with pytest.raises(AudioModelError, match=r"shorter than CNN14 accepts \(9920 samples = 0.31 s\); pass e.g. --audio-hop 2"):
        load_audio_encoder(ExtractSettings(audio_model=str(cnn14_checkpoint), sample_rate=32000, audio_hop=0.1))
    with pytest.raises(AudioModelError, match=r"runs on 32000 Hz audio but sample_rate is 16000; pass --sample-rate 32000"):
        load_audio_encoder(ExtractSettings(audio_model=str(cnn14_checkpoint), audio_hop=2.0))


def test_a_final_hop_shorter_than_cnn14_accepts_is_zero_padded_to_its_minimum(cnn14_checkpoint):
    encoder = load_audio_encoder(ExtractSettings(audio_model=str(cnn14_checkpoint), sample_rate=32000, audio_hop=1.0))
    wave = noise(1.1, 32000)  # 0.1 s past the first hop: 3200 samples, CNN14 needs 9920
    tokens, _ = encoder(wave)
    rest = np.zeros(9920, np.float32)
    rest[:3200] = wave[32000:]
    with torch.inference_mode():
        expected = encoder.net.embed(torch.from_numpy(rest)[None])[0]
    assert tokens.shape == (2, 16)
    np.testing.assert_allclose(tokens[1], expected.numpy(), rtol=1e-4, atol=1e-5)


def test_published_cnn14_shape_is_the_default():
    assert Cnn14Config().widths == PUBLISHED_WIDTHS and (Cnn14Config().sample_rate, Cnn14Config().hop) == (32000, 320)


def test_checkpoints_are_never_unpickled(tmp_path, wav2vec2_checkpoint):
    data = torch.load(wav2vec2_checkpoint, weights_only=True)
    data["extra"] = NotATensor(1)  # loading it would need code to be unpickled
    path = tmp_path / "pickled.pt"
    torch.save(data, path)
    with pytest.raises(AudioModelError, match=r"cannot be read with torch.load\(weights_only=True\)"):
        load_audio_encoder(ExtractSettings(audio_model=str(path)))


def test_a_checkpoint_of_neither_layout_and_an_unknown_name_are_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(AudioModelError, match="neither a wav2vec2-family model .* nor a PANNs CNN14 state dict"):
        load_audio_encoder(ExtractSettings(audio_model=str(path)))
    with pytest.raises(AudioModelError, match=r"'wav2vec' is not 'log-mel', an existing checkpoint file, or a torchaudio "
                                              r"wav2vec2-family bundle \(.*HUBERT_BASE.*WAV2VEC2_BASE"):
        load_audio_encoder(ExtractSettings(audio_model="wav2vec"))


def test_bundle_outside_the_download_cache_fails_offline_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert {"WAV2VEC2_BASE", "HUBERT_BASE", "WAVLM_BASE"} <= set(wav2vec2_bundles())
    with pytest.raises(AudioModelError) as error:
        load_audio_encoder(ExtractSettings(audio_model="HUBERT_BASE"))
    message = str(error.value)
    assert message.startswith(f"torchaudio bundle HUBERT_BASE is not in the download cache ({tmp_path}")
    assert "HF_HUB_OFFLINE=1" in message and "local checkpoint path" in message and "\n" not in message


def test_featurize_records_the_audio_model_its_rate_and_sha256(media, wav2vec2_checkpoint):
    settings = ExtractSettings(clip_model="lamflow-tiny", audio_model=str(wav2vec2_checkpoint), audio_hop=0.2)
    clip, audio = load_encoders(settings)
    sample = featurize_video(str(media("clip.mp4", duration=2.0)), "k", settings, clip, audio)
    assert sample["audio.npy"].shape == (10, 32) and sample["audio.npy"].dtype == np.float16
    np.testing.assert_allclose(sample["audio_ts.npy"], np.arange(10) * 0.2, atol=1e-6)
    provenance = sample["meta.json"]["provenance"]["audio"]
    assert provenance["model"] == str(wav2vec2_checkpoint) and provenance["weights_sha256"] == sha256(wav2vec2_checkpoint)
    assert (provenance["hop_seconds"], provenance["frame_step_samples"]) == (0.2, 320)
    assert sample["meta.json"]["settings"]["audio_model"] == str(wav2vec2_checkpoint)
    # extraction.json compares audio_model on resume: another audio model is another run
    assert run_record(settings, None)["settings"]["audio_model"] == str(wav2vec2_checkpoint)
    assert run_record(dataclasses.replace(settings, audio_model="log-mel"), None) != run_record(settings, None)


def test_extract_refuses_an_audio_model_no_worker_could_load_before_any_work(media, tmp_path, monkeypatch, capsys):
    from lamflow.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    video, out = media("clip.mp4", duration=1.0), tmp_path / "out"
    for name, lead in (("WAV2VEC2_BASE", "torchaudio bundle WAV2VEC2_BASE is not in the download cache"),
                       ("wav2vec", "audio_model 'wav2vec' is not 'log-mel'")):
        assert main(["extract", str(video), "--out", str(out), "--audio-model", name, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"lamflow extract: error: {lead}")
    assert not out.exists()
