"""The caption decoder: teacher forcing targets, the vocabulary mapping, greedy decoding and beam search."""
from __future__ import annotations

import pytest
import torch

from lamflow.datasets.caption_text import decode_caption, encode_caption, end_id, start_id
from lamflow.train.caption_decoder import PAD, UNKNOWN, CaptionDecoder

DIM = 16


def decoder_for(texts: list[str], max_tokens: int = 12, seed: int = 0) -> CaptionDecoder:
    torch.manual_seed(seed)
    vocabulary = sorted({t for text in texts for t in encode_caption(text)})
    return CaptionDecoder(DIM, heads=2, layers=1, dropout=0.0, vocabulary=vocabulary, max_tokens=max_tokens).eval()


def memory(batch: int = 2, length: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    padding = torch.zeros(batch, length, dtype=torch.bool)
    padding[1:, -2:] = True
    return torch.randn(batch, length, DIM, generator=generator), padding


def batch_of(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [encode_caption(text) for text in captions]
    tokens = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
    padding = torch.ones(len(ids), max(map(len, ids)), dtype=torch.bool)
    for row, caption in enumerate(ids):
        tokens[row, : len(caption)] = torch.tensor(caption)
        padding[row, : len(caption)] = False
    return tokens, padding


def indices(decoder: CaptionDecoder, words: str) -> list[int]:
    return [int(decoder.to_index[bpe]) for bpe in encode_caption(words)[1:-1]]


def test_teacher_forcing_targets_are_the_next_tokens_unknown_words_and_padding_included():
    decoder = decoder_for(["a high tone", "a red shape"])
    outputs = decoder(*memory(), *batch_of(["a high tone rings", "a red shape"]))  # "rings" is not in the vocabulary
    assert outputs["logits"].shape == (2, 5, decoder.num_outputs)
    assert outputs["targets"].tolist() == [[*indices(decoder, "a high tone"), UNKNOWN, decoder.end],
                                           [*indices(decoder, "a red shape"), decoder.end, PAD]]


def test_captions_longer_than_max_tokens_are_cut_and_still_end():
    decoder = decoder_for(["a red shape appears"], max_tokens=4)
    outputs = decoder(*memory(), *batch_of(["a red shape appears", "a red"]))
    # [START, a, red, shape, appears, END] -> [START, a, red, END]; the short caption is as it was.
    assert outputs["targets"].tolist() == [[*indices(decoder, "a red"), decoder.end], [*indices(decoder, "a red"), decoder.end]]


def test_greedy_decoding_takes_the_most_likely_word_at_every_step():
    decoder = decoder_for(["a red shape appears while a high tone beeps", "a blue shape", "a low tone"], max_tokens=8)
    mem, pad = memory()
    generated = decoder.generate(mem, pad, beam_size=1)
    for item in range(2):
        indices = [decoder.start]
        for _ in range(decoder.max_tokens - 1):
            logits = decoder.logits(torch.tensor([indices]), mem[item : item + 1], pad[item : item + 1])[0, -1]
            logits[[PAD, UNKNOWN, decoder.start]] = float("-inf")
            if not any(decoder.is_word[indices[1:]]):
                logits[decoder.end] = float("-inf")
            if len(indices) == decoder.max_tokens - 1:
                indices.append(decoder.end)
                break
            indices.append(int(logits.argmax()))
            if indices[-1] == decoder.end:
                break
        assert generated[item] == decoder.to_bpe[torch.tensor(indices[1:-1])].tolist()


class ScriptedDecoder(CaptionDecoder):
    """The search under test with a scripted next-token distribution instead of the network: after a prefix
    (tuple of words), ``script[prefix]`` gives each next word's probability."""

    def __init__(self, script: dict[tuple[str, ...], dict[str, float]]):
        super().__init__(DIM, 2, 1, 0.0, sorted({start_id(), end_id()} | {encode_caption(w)[1] for w in ("red", "blue", "tone")}), 6)
        self.words = {self.to_index[encode_caption(w)[1]].item(): w for w in ("red", "blue", "tone")}
        self.words[self.end] = "END"
        self.script = script

    def logits(self, indices, memory, memory_padding, padding=None):
        out = torch.full((*indices.shape, self.num_outputs), float("-inf"))  # unscripted words are impossible
        for row, sequence in enumerate(indices.tolist()):
            prefix = tuple(self.words[i] for i in sequence[1:] if i in self.words)
            for word, probability in self.script.get(prefix, {"END": 1.0}).items():
                index = next(i for i, w in self.words.items() if w == word)
                out[row, -1, index] = torch.tensor(probability).log()
        return out


def search(decoder: ScriptedDecoder, beam_size: int, length_penalty: float = 1.0) -> str:
    [ids] = decoder.generate(torch.zeros(1, 1, DIM), torch.zeros(1, 1, dtype=torch.bool), beam_size, length_penalty)
    return decode_caption(ids)


def test_beam_search_finds_the_likelier_caption_that_greedy_misses():
    script = {(): {"red": 0.6, "blue": 0.4},
              ("red",): {"tone": 0.35, "blue": 0.35, "END": 0.3}, ("red", "tone"): {"END": 1.0}, ("red", "blue"): {"END": 1.0},
              ("blue",): {"END": 0.9, "tone": 0.1}}
    decoder = ScriptedDecoder(script)
    assert search(decoder, beam_size=1) == "red tone"  # 0.6 * 0.35 = 0.21
    assert search(decoder, beam_size=2, length_penalty=0.0) == "blue"  # 0.4 * 0.9 = 0.36


def test_the_length_penalty_decides_between_short_and_long_captions():
    script = {(): {"red": 1.0}, ("red",): {"END": 0.45, "blue": 0.55}, ("red", "blue"): {"END": 0.7, "tone": 0.3}}
    decoder = ScriptedDecoder(script)
    # "red": log 0.45 over 2 tokens (END included); "red blue": log 0.385 over 3 tokens.
    assert search(decoder, beam_size=2, length_penalty=0.0) == "red"
    assert search(decoder, beam_size=2, length_penalty=1.0) == "red blue"


@pytest.mark.parametrize("beam_size", [1, 3])
def test_generated_captions_have_words_and_stop_at_the_maximum_length(beam_size):
    decoder = decoder_for(["a red shape appears", ". , !", "a high tone beeps"], max_tokens=6, seed=3)
    for ids in decoder.generate(*memory(batch=4), beam_size=beam_size):
        assert 1 <= len(ids) <= decoder.max_tokens - 2
        assert start_id() not in ids and end_id() not in ids and set(ids) <= set(decoder.vocabulary)
        assert any(ch.isalnum() for ch in decode_caption(ids))


def test_the_vocabulary_must_hold_the_start_and_end_tokens():
    with pytest.raises(ValueError, match="including the start and end ids"):
        CaptionDecoder(DIM, 2, 1, 0.0, [320, 736], 8)
