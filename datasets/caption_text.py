"""Caption text <-> BPE token ids, with open_clip's tokenizer (its byte-pair vocabulary ships with the
package, so it works offline), and the caption part of the batches the generation tasks collate.

A tokenised caption is ``[START, t1, ..., tn, END]`` in open_clip's id space (49,408 ids, lower-cased,
whitespace cleaned as CLIP does); the caption decoder maps these ids to its own (possibly smaller) output
vocabulary. The tokenizer is built once per process.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping, Sequence


@lru_cache(maxsize=1)
def _tokenizer() -> Any:
    # Imported here: open_clip pulls in timm and friends, which readers of caption files never need.
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def vocabulary_size() -> int:
    """Number of ids of the BPE vocabulary (special tokens included)."""
    return len(_tokenizer().encoder)


def start_id() -> int:
    return _tokenizer().sot_token_id


def end_id() -> int:
    return _tokenizer().eot_token_id


def encode_caption(text: str) -> list[int]:
    """``[START, ...BPE ids of text..., END]``; a text with no token left after cleaning gives ``[START, END]``."""
    tokenizer = _tokenizer()
    return [tokenizer.sot_token_id, *tokenizer.encode(text), tokenizer.eot_token_id]


def decode_caption(ids: Sequence[int]) -> str:
    """The text of BPE ids (start/end ids dropped), words separated by single spaces."""
    tokenizer = _tokenizer()
    special = {tokenizer.sot_token_id, tokenizer.eot_token_id}
    return " ".join(tokenizer.decode([i for i in ids if i not in special]).split())


def collate_captions(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The caption part of a batch: ``caption_keys`` (the ids predictions are written under), and the items'
    captions as ``caption_tokens`` (B, L) long, zero-padded, with ``caption_padding`` (B, L) bool (True = padding)."""
    import torch  # here, not at the top: `lamflow eval ad` reads the AD field names of this folder without torch

    captions = [item["caption"] for item in items]
    longest = max(len(ids) for ids in captions)
    tokens = torch.zeros(len(captions), longest, dtype=torch.long)
    padding = torch.ones(len(captions), longest, dtype=torch.bool)
    for row, ids in enumerate(captions):
        tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        padding[row, : len(ids)] = False
    return {"caption_keys": [item["caption_key"] for item in items], "caption_tokens": tokens, "caption_padding": padding}
