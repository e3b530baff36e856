"""One image -> one shard sample: decode, CLIP patch tokens, and where every array came from.

The unit of work of an image run (``lamflow extract --media image``, one Dask task per image); the encoder
is loaded once per worker with :func:`load_image_encoder`, never per image.

Pillow decodes, not ffmpeg: open_clip's own preprocessing (the inference transform its
``create_model_and_transforms`` returns) is defined on Pillow images, so the pixels the model sees are the
ones it was trained and evaluated with; and decoding a small file in-process costs far less than starting
an ffmpeg process per image. A file Pillow cannot read completely (not an image, truncated, a
decompression bomb) is a :class:`DecodeError`, recorded as that input's failure like a corrupt video.

The sample has one stream, ``image``:

- ``image.npy``: (1 + N) x D tokens, row 0 the class token and rows 1..N the N patches in raster order
  (``ClipEncoder.encode_image_tokens``; 1 + 49 for ViT-B/32 at 224 px);
- ``image_ts.npy``: N + 1 zeros. A still image is one instant, and the shard contract's timestamps are
  seconds; a token's place in the image is its row, and CLIP's positional embedding already marks each
  patch's place in its features.

``meta.json`` records a duration of 0, the decoded picture (format, size, mode, frames) and the provenance
of the tokens; the worker adds the source and the ``original_name`` (``class/image`` for an image folder,
where the classification task reads the label from: ``data.labels: folder``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import PIL
from PIL import Image

from lamflow import __version__ as lamflow_version
from lamflow.contract import IMAGE_STREAM, timestamps_field, tokens_field
from lamflow.devices import require_device
from lamflow.pipelines.clip_encoder import ClipEncoder
from lamflow.pipelines.ffmpeg_process import DecodeError
from lamflow.pipelines.settings import ImageSettings

DECODER = f"Pillow {PIL.__version__}"
_EXIF_ORIENTATION = 0x0112  # the EXIF tag a camera sets when the stored pixels are rotated


def load_image_encoder(settings: ImageSettings) -> ClipEncoder:
    """What a worker calls once: the CLIP model for these settings, checked to give patch tokens."""
    settings.validate()
    require_device(settings.device, "device")  # on the worker: a cluster's workers may differ from the client
    clip = ClipEncoder(settings.clip_model, settings.pretrained, settings.device)
    clip.check_image_tokens()
    return clip


def decode_image(path: str) -> tuple[Image.Image, dict[str, Any]]:
    """(the picture as RGB, what was decoded); raise :class:`DecodeError` for a file Pillow cannot read whole."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not half-way through preprocessing
            info = {"format": image.format, "width": image.width, "height": image.height, "mode": image.mode,
                    "frames": int(getattr(image, "n_frames", 1)),
                    "exif_orientation": image.getexif().get(_EXIF_ORIENTATION)}
            return image.convert("RGB"), info
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DecodeError(f"{path}: not a readable image ({error})") from None


def _notes(info: dict[str, Any], clip: ClipEncoder) -> list[str]:
    notes = []
    if info["frames"] > 1:
        notes.append(f"{info['frames']} frames ({info['format']}): the first is encoded")
    if info["exif_orientation"] not in (None, 1):
        notes.append(f"EXIF orientation {info['exif_orientation']} not applied: the pixels are encoded as stored "
                     "(as torchvision's ImageFolder and open_clip read them)")
    if clip.random_init:
        notes.append("RANDOM CLIP WEIGHTS (pretrained='none'): image features carry no learned meaning")
    return notes


def featurize_image(source: str, key: str, settings: ImageSettings, clip: ClipEncoder) -> dict[str, Any]:
    """Return the shard sample for the image at ``source`` (a local path); raise DecodeError for a bad file."""
    if (settings.clip_model, settings.pretrained) != (clip.model_name, clip.pretrained):
        raise ValueError(f"settings name CLIP {settings.clip_model!r}/{settings.pretrained!r} but the loaded encoder is "
                         f"{clip.model_name!r}/{clip.pretrained!r}; build it with load_image_encoder(settings)")
    picture, info = decode_image(source)
    tokens = clip.encode_image_tokens([picture])[0].astype(settings.dtype)
    preprocess = clip.preprocess_cfg
    provenance = {
        **clip.provenance(),
        "resize": f"open_clip inference transform: resize ({preprocess.resize_mode} side, {preprocess.interpolation}) "
                  f"to {preprocess.size}, centre crop, RGB",
        "tokens": "row 0: class token; rows 1..N: patches in raster order; last ViT block after ln_post, "
                  "projected by visual.proj, L2-normalised",
        "grid": list(clip.image_grid),
        "timestamps": "0 for every token: a still image is one instant (the row is the token's place)",
        "decoder": DECODER,
        "dtype": settings.dtype,
    }
    meta: dict[str, Any] = {
        "key": key,
        "source": str(source),
        "duration": 0.0,
        "image": {name: value for name, value in info.items() if name != "exif_orientation"},
        "counts": {IMAGE_STREAM: int(len(tokens))},
        "settings": settings.to_json(),
        "lamflow_version": lamflow_version,
        "notes": _notes(info, clip),
        "provenance": {IMAGE_STREAM: provenance},
    }
    return {
        "__key__": key,
        tokens_field(IMAGE_STREAM): tokens,
        timestamps_field(IMAGE_STREAM): np.zeros(len(tokens), np.float32),
        "meta.json": meta,
    }
