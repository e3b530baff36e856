"""The caption head: a small causal transformer decoder that writes text while cross-attending to the LAM
encoder's output, trained from scratch with teacher forcing, decoded greedily or by beam search.

Why this design and not SwinBERT's (word tokens inside the encoder sequence, masked-language-model
training, iterative decoding):

- LAM stays on the video side, unchanged: its mask generators see the same [video ; audio] sequence in
  captioning as in moment retrieval and classification, and no word token has to be kept from attending
  to the words after it through a learnable mask that could undo the causal rule.
- Decoding is cheap: the encoder runs once per video and every step of the decoder attends to its cached
  output; SwinBERT re-encodes hundreds of video tokens together with the words for every generated word.
- Training is denser: teacher forcing puts a loss on every word of every caption in one pass, where MLM
  learns from the ~15 % masked words; that matters for a model trained from scratch on a few thousand
  clips (no pretrained language model can be downloaded here).
- Beam search is natural for a left-to-right model; MLM decoding has no principled beam.

Vocabulary: captions are open_clip BPE ids (``lamflow.datasets.caption_text``). The decoder's own index
space is ``[PAD, UNKNOWN, *vocabulary]``: ``vocabulary`` lists the BPE ids it can read and write (by
default the ids seen in the training captions, stored in the checkpoint; a 49k-way output layer would
dwarf a small decoder), ids outside it read as UNKNOWN and are never written. The output projection is
the input embedding transposed (tied weights), which halves the decoder's largest matrix and helps rare
words.

Generation stops at END, at ``max_tokens`` (START and END included), and never writes PAD, UNKNOWN or
START; END is allowed only after a token that holds a letter or digit, so no caption comes out empty or
punctuation-only (the caption metrics reject those). Beam search keeps ``beam_size`` live hypotheses and
ranks finished ones by log-probability / length ** length_penalty (length counts END); an item stops once
``beam_size`` hypotheses have finished (early stopping, as fairseq and Hugging Face's ``early_stopping=True``
do), so ``beam_size`` 1 is exactly greedy decoding.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lamflow.datasets.caption_text import decode_caption, end_id, start_id, vocabulary_size

PAD, UNKNOWN = 0, 1  # decoder indices that come before the vocabulary's tokens
SPECIAL = 2


class CaptionDecoder(nn.Module):
    """Causal transformer decoder over the encoder's hidden states; see the module docstring."""

    def __init__(self, dim: int, heads: int, layers: int, dropout: float, vocabulary: Sequence[int], max_tokens: int):
        super().__init__()
        vocabulary = [int(token) for token in vocabulary]
        missing = {start_id(), end_id()} - set(vocabulary)
        if missing or len(set(vocabulary)) != len(vocabulary) or not all(0 <= t < vocabulary_size() for t in vocabulary):
            raise ValueError(f"caption vocabulary must list distinct BPE ids in [0, {vocabulary_size()}) including "
                             f"the start and end ids; missing {sorted(missing)}")
        self.vocabulary, self.max_tokens = vocabulary, max_tokens
        to_index = torch.full((vocabulary_size(),), UNKNOWN, dtype=torch.long)
        to_index[torch.tensor(vocabulary)] = torch.arange(SPECIAL, SPECIAL + len(vocabulary))
        # Derived from the vocabulary (which the checkpoint stores), so not part of the state dict.
        self.register_buffer("to_index", to_index, persistent=False)
        self.register_buffer("to_bpe", torch.tensor([-1] * SPECIAL + vocabulary), persistent=False)
        words = [any(c.isalnum() for c in decode_caption([token])) for token in vocabulary]
        self.register_buffer("is_word", torch.tensor([False] * SPECIAL + words), persistent=False)
        self.start, self.end = int(to_index[start_id()]), int(to_index[end_id()])
        self.embed = nn.Embedding(SPECIAL + len(vocabulary), dim)
        nn.init.normal_(self.embed.weight, std=dim ** -0.5)
        self.position = nn.Embedding(max_tokens, dim)
        layer = nn.TransformerDecoderLayer(dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(dim)
        self.bias = nn.Parameter(torch.zeros(SPECIAL + len(vocabulary)))

    @property
    def num_outputs(self) -> int:
        return self.embed.num_embeddings

    def logits(self, indices: torch.Tensor, memory: torch.Tensor, memory_padding: torch.Tensor,
               padding: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits (B, L, outputs) after every prefix of ``indices`` (B, L) decoder indices."""
        length = indices.shape[1]
        x = self.embed(indices) * math.sqrt(self.embed.embedding_dim) + self.position.weight[:length]
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=indices.device), diagonal=1)
        hidden = self.layers(x, memory, tgt_mask=causal, tgt_is_causal=True, tgt_key_padding_mask=padding,
                             memory_key_padding_mask=memory_padding)
        return F.linear(self.norm(hidden), self.embed.weight, self.bias)

    def forward(self, memory: torch.Tensor, memory_padding: torch.Tensor, tokens: torch.Tensor,
                padding: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher forcing: ``tokens`` (B, L) BPE ids ``[START, ..., END]`` zero-padded where ``padding``.

        Captions longer than ``max_tokens`` are cut and end with END. Returns ``logits`` (B, L-1, outputs)
        and ``targets`` (B, L-1) decoder indices, PAD where there is nothing to predict.
        """
        if tokens.shape[1] > self.max_tokens:
            cut = ~padding[:, self.max_tokens]
            tokens, padding = tokens[:, : self.max_tokens].clone(), padding[:, : self.max_tokens]
            tokens[cut, -1] = end_id()
        indices = self.to_index[tokens].masked_fill(padding, PAD)
        logits = self.logits(indices[:, :-1], memory, memory_padding, padding[:, :-1])
        return {"logits": logits, "targets": indices[:, 1:]}

    @torch.no_grad()
    def generate(self, memory: torch.Tensor, memory_padding: torch.Tensor, beam_size: int = 1,
                 length_penalty: float = 1.0) -> list[list[int]]:
        """One caption per item as BPE ids (without START/END): beam search, greedy for ``beam_size`` 1."""
        batch, beams = memory.shape[0], beam_size
        memory = memory.repeat_interleave(beams, dim=0)
        memory_padding = memory_padding.repeat_interleave(beams, dim=0)
        device = memory.device
        sequences = torch.full((batch * beams, 1), self.start, dtype=torch.long, device=device)
        worded = torch.zeros(batch * beams, dtype=torch.bool, device=device)
        scores = torch.full((batch, beams), float("-inf"), device=device)
        scores[:, 0] = 0.0  # the beams start identical: expand only the first
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
        never = torch.tensor([PAD, UNKNOWN, self.start], device=device)
        for length in range(1, self.max_tokens):
            log_probs = F.log_softmax(self.logits(sequences, memory, memory_padding)[:, -1].float(), dim=-1)
            log_probs[:, never] = float("-inf")
            if length == self.max_tokens - 1:  # the last position: every hypothesis ends here
                ending = log_probs[:, self.end].clone()
                log_probs.fill_(float("-inf"))
                log_probs[:, self.end] = ending
            else:
                log_probs[~worded, self.end] = float("-inf")
            candidates = (scores.reshape(-1, 1) + log_probs).reshape(batch, -1)
            top_scores, top = candidates.topk(min(2 * beams, candidates.shape[1]), dim=1)
            rows = torch.arange(batch, device=device).repeat_interleave(beams) * beams  # dead beams copy row 0
            next_tokens = torch.full((batch * beams,), PAD, dtype=torch.long, device=device)
            next_scores = torch.full((batch, beams), float("-inf"), device=device)
            for item in range(batch):
                live = 0
                for score, flat in zip(top_scores[item].tolist(), top[item].tolist()):
                    if score == float("-inf") or live == beams:
                        break
                    beam, token = divmod(flat, self.num_outputs)
                    row = item * beams + beam
                    if token == self.end:
                        if len(finished[item]) < beams:
                            finished[item].append((score / length ** length_penalty, sequences[row, 1:].tolist()))
                        continue
                    rows[item * beams + live], next_tokens[item * beams + live] = row, token
                    next_scores[item, live] = score
                    live += 1
                if len(finished[item]) == beams:
                    next_scores[item] = float("-inf")  # done: its live hypotheses are not expanded
            if all(len(done) == beams for done in finished):
                break
            sequences = torch.cat([sequences[rows], next_tokens[:, None]], dim=1)
            worded = worded[rows] | self.is_word[next_tokens]
            scores = next_scores
        best = [max(done, key=lambda hypothesis: hypothesis[0])[1] for done in finished]
        return [self.to_bpe[torch.tensor(indices, dtype=torch.long, device=device)].tolist() for indices in best]
