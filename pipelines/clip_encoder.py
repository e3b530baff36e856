"""CLIP image and text embeddings through open_clip, loaded once and reused for many videos or images.

Weights come from one of three places, and provenance records which:
- ``"none"``: random initialisation, seeded so every worker and every re-run gets the same weights
  (features stay consistent across a distributed or resumed run), flagged loudly as random_init;
- an open_clip pretrained tag (e.g. ``"openai"``): fetched by open_clip from the hub (fails offline);
- a local checkpoint file: loaded by open_clip with ``weights_only=True``, recorded by sha256.

All embeddings are L2-normalised (per frame, per image token, per text, per text token), the usual space
for CLIP similarity, and a bounded range that float16 storage keeps well.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.transform import PreprocessCfg, image_transform_v2
from open_clip.transformer import VisionTransformer, text_global_pool
from PIL import Image

from lamflow.errors import LamflowError
from lamflow.fileio import file_sha256

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
LAMFLOW_MODELS = ("lamflow-tiny", "lamflow-tiny-224")  # -224: a ViT-B/32-shaped toy (224 px, patch 32, QuickGELU)
RANDOM_INIT_SEED = 0
NORMALISATION = "l2"


class ClipWeightsError(LamflowError, RuntimeError):
    """The requested CLIP model or weights cannot be loaded; the message says what to pass instead."""


def register_lamflow_models() -> None:
    """Make lamflow's own model configs (e.g. 'lamflow-tiny') known to open_clip; safe to call repeatedly."""
    if not all(name in open_clip.list_models() for name in LAMFLOW_MODELS):
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def _create_model(model_name: str, pretrained: str, device: str) -> torch.nn.Module:
    """open_clip.create_model with lamflow's weight-source rules and errors that name the fix."""
    if open_clip.get_model_config(model_name) is None:
        raise ClipWeightsError(
            f"clip_model {model_name!r} is not an open_clip model config; choose one of "
            f"open_clip.list_models() (e.g. 'ViT-B-32-quickgelu') or 'lamflow-tiny'"
        )
    if pretrained == "none":
        # Random weights must be identical in every worker and run, or a distributed/resumed extraction
        # would mix features from different random models.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            return open_clip.create_model(model_name, pretrained=None, device=device)
    if os.path.isfile(pretrained):
        try:
            return open_clip.create_model(model_name, pretrained=pretrained, device=device, weights_only=True)
        except Exception as exc:  # open_clip raises assorted errors for a mismatched/corrupt state dict
            raise ClipWeightsError(
                f"checkpoint {pretrained!r} does not load into {model_name!r}: {exc}. Pass a checkpoint saved "
                f"from this architecture (a state_dict saved with torch.save)"
            ) from exc
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained not in tags:
        raise ClipWeightsError(
            f"pretrained {pretrained!r} is neither an existing checkpoint file nor a known tag for {model_name!r} "
            f"(tags: {tags or 'none'}); pass 'none' for random weights, a tag, or a local checkpoint path"
        )
    try:
        return open_clip.create_model(model_name, pretrained=pretrained, device=device)
    except Exception as exc:  # download errors come in many types (hub, network, cache)
        raise ClipWeightsError(
            f"could not fetch open_clip weights {model_name!r}/{pretrained!r} ({exc}). Without internet access, "
            f"download the checkpoint on a connected machine and pass its local path as pretrained "
            f"(--pretrained /path/to/checkpoint.pt), or pass 'none' for random weights"
        ) from exc


class ClipEncoder:
    """One open_clip model; encodes frames prepared by video_decode.iter_frames and texts, in inference mode."""

    def __init__(self, model_name: str, pretrained: str = "none", device: str = "cpu"):
        register_lamflow_models()
        self.model_name = model_name
        self.pretrained = pretrained
        self.device = torch.device(device)
        self.model = _create_model(model_name, pretrained, device).eval()
        self.random_init = pretrained == "none"
        if self.random_init:
            log.warning(
                "CLIP model %s has RANDOM weights (pretrained='none'): features carry no learned meaning; "
                "pass a pretrained tag or a local checkpoint path for real features",
                model_name,
            )
        self.weights_sha256 = file_sha256(pretrained) if os.path.isfile(pretrained) else None
        config = open_clip.get_model_config(model_name)
        self.quick_gelu = bool(config.get("quick_gelu", False))
        image_size = self.model.visual.image_size
        if isinstance(image_size, (tuple, list)):
            if image_size[0] != image_size[1]:
                raise ClipWeightsError(f"{model_name!r} has a non-square input {image_size}; use a square-input model")
            image_size = image_size[0]
        self.image_size = int(image_size)
        self.embed_dim = int(config["embed_dim"])
        preprocess = self.model.visual.preprocess_cfg
        self.image_mean = tuple(float(v) for v in preprocess["mean"])
        self.image_std = tuple(float(v) for v in preprocess["std"])
        self._mean = torch.tensor(self.image_mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.image_std, device=self.device).view(1, 3, 1, 1)
        # The model's own inference transform for still images (what create_model_and_transforms returns
        # as preprocess_val): resize, centre crop, RGB, normalise, as its pretrained weights expect.
        self.preprocess_cfg = PreprocessCfg(**self.model.visual.preprocess_cfg)
        self.preprocess = image_transform_v2(self.preprocess_cfg, is_train=False)
        self.tokenizer = open_clip.get_tokenizer(model_name)

    @torch.inference_mode()
    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 RGB frames (S = image_size) -> (B, D) float32 L2-normalised embeddings."""
        if frames.ndim != 4 or frames.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(
                f"frames must be (B, {self.image_size}, {self.image_size}, 3) uint8 for {self.model_name}, "
                f"got {frames.shape}"
            )
        if len(frames) == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        pixels = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        pixels = pixels.permute(0, 3, 1, 2).float().div_(255.0)
        return self.encode_pixels((pixels - self._mean) / self._std)

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor, normalize: bool = True) -> np.ndarray:
        """(B, 3, S, S) float pixels, already normalised for the model -> (B, D) float32 ``encode_image``
        embeddings, L2-normalised unless ``normalize`` is False (a preset that keeps another extractor's raw
        outputs, with its own pixel normalisation)."""
        if len(pixels) == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        return self.model.encode_image(pixels.to(self.device), normalize=normalize).float().cpu().numpy()

    def check_image_tokens(self) -> None:
        """Raise :class:`ClipWeightsError` unless the image tower is a ViT whose output tokens are its patches."""
        visual = self.model.visual
        if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None:
            raise ClipWeightsError(
                f"{self.model_name!r} has no plain ViT image tower ({type(visual).__name__}"
                f"{' with an attention pooler' if isinstance(visual, VisionTransformer) else ''}); image patch tokens "
                "need an open_clip CLIP ViT, e.g. ViT-B-32-quickgelu or lamflow-tiny"
            )

    @property
    def image_grid(self) -> tuple[int, int]:
        """(rows, columns) of patches of a preprocessed image: (7, 7) for ViT-B/32 at 224 px."""
        return tuple(int(n) for n in self.model.visual.grid_size)

    @torch.inference_mode()
    def encode_image_tokens(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Images -> (B, 1 + N, D) float32 L2-normalised tokens: row 0 the class token, rows 1..N the N patches
        in raster order (``image_grid``), after the model's own preprocessing (``preprocess``).

        Tokens are the ViT's last block output after its final layer norm (ln_post), projected by
        ``visual.proj`` into the joint space (so D matches the pooled embedding, as for per-token text
        embeddings). With CLIP's usual class-token pooling, row 0 is the image embedding ``encode_image`` returns.
        """
        self.check_image_tokens()
        pixels = torch.stack([self.preprocess(image) for image in images]).to(self.device)
        visual = self.model.visual
        output = visual.forward_intermediates(pixels, indices=1, normalize_intermediates=True, output_fmt="NLC",
                                              output_extra_tokens=True, intermediates_only=True)
        tokens = torch.cat([output["image_intermediates_prefix"][-1], output["image_intermediates"][-1]], dim=1)
        return F.normalize((tokens @ visual.proj).float(), dim=-1).cpu().numpy()

    @torch.inference_mode()
    def encode_texts(self, texts: list[str], project_tokens: bool = True,
                     normalize: bool = True) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Per-token (K, L, D), pooled (K, D), token counts (SOT..EOT inclusive); L = the longest count.

        Per-token embeddings are the text transformer's output after the final layer norm, projected by
        text_projection into the joint space (so D matches the pooled one); rows past a text's count are
        zero. The pooled embedding is the model's own pooled token (EOT for CLIP), so it equals that row.
        ``project_tokens=False`` keeps the tokens before the projection (D = the text transformer's width;
        the pooled embedding is still projected): the ``last_hidden_state`` of moment_detr's extractor
        (pipelines/moment_detr.py). ``normalize=False`` skips the L2 normalisation of both.
        """
        if not hasattr(self.model, "token_embedding"):
            raise ClipWeightsError(
                f"{self.model_name!r} has a custom text tower; per-token text embeddings need an open_clip CLIP "
                f"model with the built-in text transformer (e.g. ViT-B-32-quickgelu)"
            )
        model = self.model
        if not texts:
            width = self.embed_dim if project_tokens else model.transformer.width
            return np.zeros((0, 0, width), np.float32), np.zeros((0, self.embed_dim), np.float32), []
        tokens = self.tokenizer(list(texts)).to(self.device)
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding.to(cast_dtype)
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))

        def pool(states: torch.Tensor) -> torch.Tensor:
            return text_global_pool(states, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))

        if project_tokens:
            x = self._project_text(x)
            pooled = pool(x)
        else:
            pooled = self._project_text(pool(x))
        pad_id = getattr(self.tokenizer, "pad_id", 0) or 0
        counts = (tokens != pad_id).sum(dim=1)
        longest = int(counts.max())
        per_token = x[:, :longest].float()
        pooled = pooled.float()
        if normalize:
            per_token, pooled = F.normalize(per_token, dim=-1), F.normalize(pooled, dim=-1)
        per_token = per_token * (torch.arange(longest, device=x.device)[None, :] < counts[:, None]).unsqueeze(-1)
        return per_token.cpu().numpy(), pooled.cpu().numpy(), [int(c) for c in counts]

    def _project_text(self, states: torch.Tensor) -> torch.Tensor:
        """The text tower's projection into the joint space (a matrix, or a Linear in some configs)."""
        projection = self.model.text_projection
        return projection(states) if isinstance(projection, torch.nn.Linear) else states @ projection

    def provenance(self) -> dict[str, Any]:
        """Everything needed to know which features these are (stored in meta.json)."""
        return {
            "encoder": "open_clip",
            "open_clip_version": open_clip.__version__,
            "model": self.model_name,
            "pretrained": self.pretrained,
            "weights_sha256": self.weights_sha256,
            "random_init": self.random_init,
            "init_seed": RANDOM_INIT_SEED if self.random_init else None,
            "quick_gelu": self.quick_gelu,
            "image_size": self.image_size,
            "embed_dim": self.embed_dim,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "resize": "shorter side to image_size (ffmpeg bicubic) then center crop",
            "normalisation": NORMALISATION,
        }
