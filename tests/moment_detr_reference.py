"""moment_detr's ``run_on_video`` feature extractor, re-implemented for tests from its published code.

jayleicn/moment_detr, ``run_on_video/data_utils.py`` (VideoLoader, Preprocessing, ClipFeatureExtractor) and
``run_on_video/clip/model.py`` (the CLIP forward, ``encode_text`` returning ``last_hidden_state`` and
``pooler_output``), written again here without lamflow and without open_clip's model code: ffprobe and the
ffmpeg-python filter chain as it calls them, numpy/torch preprocessing, and the CLIP forward in plain torch
on an OpenAI-format state dict, with the architecture read from the state dict's shapes as its
``build_model`` does. Only the BPE tokenizer is open_clip's, a copy of the same OpenAI tokenizer and vocabulary.
Tests compare lamflow's ``--preset moment_detr`` against this. ``load_video_features`` and
``load_query_features`` re-implement how ``moment_detr/start_end_dataset.py`` reads a feature folder, for the
tests of exports.
"""
from __future__ import annotations

import math
from pathlib import Path

import ffmpeg
import numpy as np
import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer

SIZE = 224
FRAMERATE = 1 / 2
BATCH = 60  # frames and texts per forward, as ClipFeatureExtractor


# ---- video: VideoLoader.read_video_from_file -------------------------------------------------------------
def video_info(path: str | Path) -> dict:
    """Width, height and duration as _get_video_info reads them: the stream's duration only when the stream
    states both nb_frames and duration, else -1."""
    stream = next(s for s in ffmpeg.probe(str(path))["streams"] if s["codec_type"] == "video")
    try:
        int(stream["nb_frames"])
        duration = float(stream["duration"])
    except (KeyError, ValueError):
        duration = -1
    return {"width": int(stream["width"]), "height": int(stream["height"]), "duration": duration}


def sampling_fps(duration: float) -> float:
    """0.5 fps; a video shorter than 1/0.5 + 0.1 s gets 2 / max(int(duration), 1)."""
    if 0 < duration < 1 / FRAMERATE + 0.1:
        return 2 / max(int(duration), 1)
    return FRAMERATE


def read_video(path: str | Path) -> np.ndarray:
    """(T, 224, 224, 3) float32 frames: ffmpeg fps, scale (shorter side 224), centre crop, rgb24."""
    info = video_info(path)
    h, w = info["height"], info["width"]
    height, width = (int(h * SIZE / w), SIZE) if h >= w else (SIZE, int(w * SIZE / h))
    cmd = ffmpeg.input(str(path)).filter("fps", fps=sampling_fps(info["duration"])).filter("scale", width, height)
    cmd = cmd.crop(int((width - SIZE) / 2.0), int((height - SIZE) / 2.0), SIZE, SIZE)
    out, _ = cmd.output("pipe:", format="rawvideo", pix_fmt="rgb24").run(capture_stdout=True, quiet=True)
    return np.frombuffer(out, np.uint8).reshape(-1, SIZE, SIZE, 3).astype("float32")


def preprocess(frames: np.ndarray) -> torch.Tensor:
    """Preprocessing + Normalize: /255, then CLIP's mean and std (+1e-8), channels first."""
    mean = torch.FloatTensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.FloatTensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    tensor = torch.from_numpy(frames).permute(0, 3, 1, 2) / 255.0
    return (tensor - mean) / (std + 1e-8)


# ---- CLIP in plain torch, on an OpenAI-format state dict ----------------------------------------------------
def _count_layers(state: dict, prefix: str) -> int:
    return len({key[len(prefix):].split(".")[0] for key in state if key.startswith(prefix)})


class OpenAIClip:
    """The forward of OpenAI's CLIP ViT (QuickGELU, pre-LN blocks, causal text mask) on a state dict."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self.state = {key: value.float() for key, value in state.items()}
        self.vision_heads = state["visual.conv1.weight"].shape[0] // 64
        self.vision_layers = _count_layers(state, "visual.transformer.resblocks.")
        self.patch = state["visual.conv1.weight"].shape[-1]
        self.text_heads = state["ln_final.weight"].shape[0] // 64
        self.text_layers = _count_layers(state, "transformer.resblocks.")

    def _ln(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.state[f"{name}.weight"], self.state[f"{name}.bias"], eps=1e-5)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ self.state[f"{name}.weight"].T + self.state[f"{name}.bias"]

    def _block(self, x: torch.Tensor, name: str, heads: int, mask: torch.Tensor | None) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = (self._ln(x, f"{name}.ln_1") @ self.state[f"{name}.attn.in_proj_weight"].T
                   + self.state[f"{name}.attn.in_proj_bias"]).split(width, dim=-1)
        q, k, v = (t.reshape(n, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(width // heads)
        if mask is not None:
            scores = scores + mask
        attended = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, length, width)
        x = x + self._linear(attended, f"{name}.attn.out_proj")
        hidden = self._linear(self._ln(x, f"{name}.ln_2"), f"{name}.mlp.c_fc")
        return x + self._linear(hidden * torch.sigmoid(1.702 * hidden), f"{name}.mlp.c_proj")

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        s = self.state
        x = F.conv2d(pixels, s["visual.conv1.weight"], stride=self.patch)
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([s["visual.class_embedding"].expand(len(x), 1, -1), x], dim=1) + s["visual.positional_embedding"]
        x = self._ln(x, "visual.ln_pre")
        for layer in range(self.vision_layers):
            x = self._block(x, f"visual.transformer.resblocks.{layer}", self.vision_heads, None)
        return self._ln(x[:, 0], "visual.ln_post") @ s["visual.proj"]

    @torch.no_grad()
    def encode_text(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.state
        length = tokens.shape[1]
        x = s["token_embedding.weight"][tokens] + s["positional_embedding"][:length]
        mask = torch.full((length, length), float("-inf")).triu(1)
        for layer in range(self.text_layers):
            x = self._block(x, f"transformer.resblocks.{layer}", self.text_heads, mask)
        x = self._ln(x, "ln_final")
        pooled = x[torch.arange(len(x)), tokens.argmax(dim=-1)] @ s["text_projection"]
        return {"last_hidden_state": x, "pooler_output": pooled}


def tokenize(texts: list[str], context_length: int = 77) -> torch.Tensor:
    """clip.tokenize: start token, BPE tokens, end token, zeros after."""
    tokenizer = SimpleTokenizer()
    sot, eot = tokenizer.encoder["<start_of_text>"], tokenizer.encoder["<end_of_text>"]
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [sot, *tokenizer.encode(text), eot]
        result[row, : len(ids)] = torch.tensor(ids)
    return result


# ---- ClipFeatureExtractor ------------------------------------------------------------------------------------
def encode_video(path: str | Path, model: OpenAIClip) -> np.ndarray:
    """(T, D) encode_image features of the video's clips, in batches of 60 frames."""
    frames = preprocess(read_video(path))
    return torch.cat([model.encode_image(frames[i : i + BATCH]) for i in range(0, len(frames), BATCH)]).numpy()


def encode_queries(texts: list[str], model: OpenAIClip) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per text: (last_hidden_state rows of its non-zero tokens, pooler_output)."""
    features = []
    for first in range(0, len(texts), BATCH):
        tokens = tokenize(texts[first : first + BATCH])
        output = model.encode_text(tokens)
        for row, valid in enumerate((tokens != 0).sum(1).tolist()):
            features.append((output["last_hidden_state"][row, :valid].numpy(), output["pooler_output"][row].numpy()))
    return features


# ---- weights ---------------------------------------------------------------------------------------------
def openai_state_dict(seed: int, vision_width: int = 128, vision_layers: int = 2, patch: int = 32,
                      image_size: int = SIZE, text_width: int = 128, text_layers: int = 2, embed_dim: int = 64,
                      context_length: int = 77, vocab_size: int = 49408) -> dict[str, torch.Tensor]:
    """Random weights under OpenAI CLIP's state-dict names and shapes (what ``torch.save(model.state_dict())``
    of its CLIP holds), scaled like its initialisation; layer norms and biases are random too, so a forward
    that skipped one would show."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int, std: float) -> torch.Tensor:
        return torch.from_numpy((rng.standard_normal(shape) * std).astype(np.float32))

    def norm(prefix: str, width: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1 + normal(width, std=0.1), f"{prefix}.bias": normal(width, std=0.1)}

    def blocks(prefix: str, width: int, layers: int) -> dict[str, torch.Tensor]:
        state = {}
        for layer in range(layers):
            name = f"{prefix}.resblocks.{layer}"
            state |= {f"{name}.attn.in_proj_weight": normal(3 * width, width, std=width**-0.5),
                      f"{name}.attn.in_proj_bias": normal(3 * width, std=0.02),
                      f"{name}.attn.out_proj.weight": normal(width, width, std=width**-0.5),
                      f"{name}.attn.out_proj.bias": normal(width, std=0.02),
                      f"{name}.mlp.c_fc.weight": normal(4 * width, width, std=(2 * width) ** -0.5),
                      f"{name}.mlp.c_fc.bias": normal(4 * width, std=0.02),
                      f"{name}.mlp.c_proj.weight": normal(width, 4 * width, std=width**-0.5),
                      f"{name}.mlp.c_proj.bias": normal(width, std=0.02),
                      **norm(f"{name}.ln_1", width), **norm(f"{name}.ln_2", width)}
        return state

    grid = image_size // patch
    return {
        "visual.class_embedding": normal(vision_width, std=vision_width**-0.5),
        "visual.positional_embedding": normal(grid * grid + 1, vision_width, std=vision_width**-0.5),
        "visual.proj": normal(vision_width, embed_dim, std=vision_width**-0.5),
        "visual.conv1.weight": normal(vision_width, 3, patch, patch, std=(3 * patch * patch) ** -0.5),
        **norm("visual.ln_pre", vision_width), **norm("visual.ln_post", vision_width),
        **blocks("visual.transformer", vision_width, vision_layers),
        "token_embedding.weight": normal(vocab_size, text_width, std=0.02),
        "positional_embedding": normal(context_length, text_width, std=0.01),
        **blocks("transformer", text_width, text_layers),
        **norm("ln_final", text_width),
        "text_projection": normal(text_width, embed_dim, std=text_width**-0.5),
        "logit_scale": torch.tensor(float(np.log(1 / 0.07))),
    }


# ---- StartEndDataset: how its training reads a feature folder ------------------------------------------------
def l2_normalize(array: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    return array / (np.linalg.norm(array, axis=-1, keepdims=True) + eps)


def load_video_features(feature_dirs: list[Path], vid: str, max_v_l: int = 75) -> np.ndarray:
    """_get_video_feat_by_vid: each dir's {vid}.npz 'features' as float32, cut to max_v_l, L2-normalised, all
    cut to the shortest and concatenated along the feature axis."""
    features = [l2_normalize(np.load(Path(d) / f"{vid}.npz")["features"][:max_v_l].astype(np.float32))
                for d in feature_dirs]
    shortest = min(len(f) for f in features)
    return np.concatenate([f[:shortest] for f in features], axis=1)


def load_query_features(query_dir: Path, qid: int, feature_type: str = "last_hidden_state",
                        max_q_l: int = 32) -> np.ndarray:
    """_get_query_feat_by_qid: qid{qid}.npz's last_hidden_state (cut to max_q_l) or pooler_output, float32,
    L2-normalised."""
    feature = np.load(Path(query_dir) / f"qid{qid}.npz")[feature_type].astype(np.float32)
    if feature_type == "last_hidden_state":
        feature = feature[:max_q_l]
    return l2_normalize(feature)
