"""`lamflow eval ad`: AutoAD-II's R@k/N, its windowing and top-k on hand-made similarity matrices, and the
two similarities: BERTScore through bert_score's real loading code (a tiny randomly initialised RoBERTa
saved in the test) and the offline TF-IDF cosine, labelled as not the official metric."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lamflow.cli import main
from lamflow.train.tasks.audio_description_eval import (
    BertScoreSimilarity,
    TfidfSimilarity,
    load_references,
    recall_within_windows,
    window_starts,
)

# --------------------------------------------------------------------------------------------------
# The metric on a similarity matrix
# --------------------------------------------------------------------------------------------------


def test_windows_of_n_with_stride_n_over_2_drop_the_partial_last_one():
    # AutoAD-II's worked example: 9 ADs, N = 4 -> windows at 0, 2, 4; ADs 6-8 only partly covered, 8 never.
    assert window_starts(9, 4) == [(0, 4), (2, 4), (4, 4)]
    assert window_starts(24, 16) == [(0, 16), (8, 16)]
    assert window_starts(23, 16) == [(0, 16)]
    assert window_starts(16, 16) == [(0, 16)]
    # Shorter than N: one window of the whole movie (the official code yields no window and fails).
    assert window_starts(3, 16) == [(0, 3)]


def test_recall_within_windows_on_a_hand_made_matrix():
    # 6 ADs, N = 4: windows rows/cols 0-3 and 2-5. Background similarity .1; the entries that matter:
    s = np.full((6, 6), 0.1)
    s[0, 0] = 0.9                                # row 0: own first                      -> rank 0
    s[1, 1], s[1, 0] = 0.8, 0.95                 # row 1: reference 0 beats its own      -> rank 1
    s[2, 2], s[2, 3], s[2, 5] = 0.7, 0.75, 0.99  # row 2: rank 1 in window 1; in window 2 refs 3 and 5 beat it -> rank 2
    s[3, 3], s[3, 0] = 0.6, 0.6                  # row 3: tie with the earlier reference 0 -> rank 1 in window 1;
    #                                              window 2 has no reference 0                -> rank 0
    s[4, 4], s[4, 2], s[4, 3], s[4, 5] = 0.5, 0.8, 0.7, 0.6  # row 4: three references beat it -> rank 3
    s[5, 5] = 0.9                                # row 5: own first                      -> rank 0
    # Window 1 (rows 0-3) ranks [0, 1, 1, 1]: R@1 = 1/4, R@2 = 1.  Window 2 (rows 2-5) ranks [2, 0, 3, 0]:
    # R@1 = 2/4, R@2 = 2/4, R@3 = 3/4.  Movie = mean over windows: R@1 .375, R@2 .75, R@3 .875, R@4 1.
    assert recall_within_windows(s, (1, 2, 3, 4), n=4) == {1: 0.375, 2: 0.75, 3: 0.875, 4: 1.0}
    # With N = 6 there is one window: ranks [0, 1, 3, 1, 3, 0] -> R@1 2/6, R@2 4/6.
    assert recall_within_windows(s, (1, 2), n=6) == pytest.approx({1: 2 / 6, 2: 4 / 6})


def test_a_movie_shorter_than_n_is_one_window_and_k_beyond_the_window_recalls_all():
    s = np.array([[0.2, 0.9, 0.1],
                  [0.3, 0.8, 0.1],
                  [0.5, 0.4, 0.1]])  # ranks: row 0 -> 1, row 1 -> 0, row 2 -> 2
    assert recall_within_windows(s, (1, 2, 5), n=16) == pytest.approx({1: 1 / 3, 2: 2 / 3, 5: 1.0})


# --------------------------------------------------------------------------------------------------
# Files and the command
# --------------------------------------------------------------------------------------------------

MOVIE_A = [  # five ADs, written out of time order: ids name their time rank
    {"ad_id": "a3", "movie": "3001_21_JUMP_STREET", "start": 30.0, "end": 33.0, "text": "Jenko kicks open the door."},
    {"ad_id": "a1", "movie": "3001_21_JUMP_STREET", "start": 10.0, "end": 12.5, "text": "Schmidt adjusts his tie."},
    {"ad_id": "a2", "movie": "3001_21_JUMP_STREET", "start": 20.0, "end": 21.0, "text": "A teacher writes on a board."},
    {"ad_id": "a5", "movie": "3001_21_JUMP_STREET", "start": 50.0, "end": 52.0, "text": "Students dance at the prom."},
    {"ad_id": "a4", "movie": "3001_21_JUMP_STREET", "start": 40.0, "end": 44.0, "text": "A car speeds along a road."},
]
MOVIE_B = [  # three ADs (shorter than N), MAD-v2 loaders' field names
    {"ad_id": 7, "movie_id": "1005_Signs", "start": 5.0, "end": 6.0, "ad": "Graham looks at the cornfield."},
    {"ad_id": 8, "movie_id": "1005_Signs", "start": 9.0, "end": 11.0, "ad": "Morgan holds a baby monitor."},
    {"ad_id": 9, "movie_id": "1005_Signs", "start": 15.0, "end": 16.0, "ad": "Bo leaves glasses of water everywhere."},
]


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def reference_file(tmp_path):
    return write_jsonl(tmp_path / "ads.jsonl", MOVIE_A + MOVIE_B)


def predictions_file(tmp_path):
    """Movie A: every AD generated exactly. Movie B: each AD gets the next one's text (rotated)."""
    rows = [{"ad_id": ad["ad_id"], "caption": ad["text"]} for ad in MOVIE_A]
    rows += [{"ad_id": ad["ad_id"], "caption": MOVIE_B[(i + 1) % 3]["ad"]} for i, ad in enumerate(MOVIE_B)]
    return write_jsonl(tmp_path / "generated.jsonl", rows)


def run_cli(capsys, gt, pred, *extra):
    code = main(["eval", "ad", "--gt", str(gt), "--pred", str(pred), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_references_are_put_in_time_order_per_movie(tmp_path):
    movies = load_references(reference_file(tmp_path))
    assert [ad.ad_id for ad in movies["3001_21_JUMP_STREET"]] == ["a1", "a2", "a3", "a4", "a5"]
    assert [ad.ad_id for ad in movies["1005_Signs"]] == ["7", "8", "9"]


def test_tfidf_similarity_is_labelled_not_official(tmp_path, capsys):
    out = tmp_path / "metrics.json"
    code, printed, err = run_cli(capsys, reference_file(tmp_path), predictions_file(tmp_path),
                                 "--similarity", "tfidf", "--k", "1,2", "--n", "4", "--out", str(out))
    assert code == 0
    result = json.loads(printed)
    assert json.loads(out.read_text()) == result
    # Movie A: generated == reference (cosine 1), and the ADs share no word with each other -> own reference
    # first: R@1 = R@2 = 100 (N = 4 over 5 ADs: one window, AD 5 dropped). Movie B (3 ADs < N: one window):
    # generated AD i is reference i+1's text, so row i is 1 at column i+1 and 0 elsewhere; the own reference
    # ties at 0 with the third one and ranks after it when that one comes earlier: ranks 1, 2, 2 ->
    # R@1 = 0, R@2 = 1/3. Means over movies: R@1 = 50, R@2 = (1 + 1/3) / 2.
    assert result["per_movie"]["3001_21_JUMP_STREET"] == {"R@1/4": 100.0, "R@2/4": 100.0, "num_ads": 5,
                                                          "num_windows": 1, "shorter_than_n": False}
    assert result["per_movie"]["1005_Signs"] == {"R@1/4": 0.0, "R@2/4": 33.33, "num_ads": 3,
                                                 "num_windows": 1, "shorter_than_n": True}
    assert result["R@1/4"] == 50.0 and result["R@2/4"] == 66.67
    assert result["num_movies"] == 2 and result["num_ads"] == 8
    assert result["similarity"]["name"] == "tfidf" and result["similarity"]["official"] is False
    assert "NOT the official AutoAD-II metric" in result["similarity"]["note"]
    assert "note: NOT the official AutoAD-II metric" in err


def test_tfidf_similarity_ranks_shared_words_higher():
    similarity = TfidfSimilarity()(["a man opens the door"], ["the door opens", "a woman sings", "rain falls"])
    assert similarity.shape == (1, 3)
    assert similarity[0, 0] > similarity[0, 1] > 0 and similarity[0, 2] == 0


@pytest.mark.parametrize(
    "references, predictions, extra, message",
    [
        (MOVIE_B, [{"ad_id": 7, "caption": "x"}, {"ad_id": 8, "caption": "y"}], (),
         r"generated.jsonl: no caption for 1 of 3 reference AD\(s\): 9;"),
        (MOVIE_B, [{"ad_id": i, "caption": "x"} for i in (7, 8, 9, 10)], (),
         r"generated.jsonl: 1 ad_id\(s\) not in the references: 10"),
        (MOVIE_B, [{"ad_id": 7, "caption": ""}], (), r"generated.jsonl:1: 'caption' must be a non-empty caption"),
        (MOVIE_B, ['{"ad_id": 7, "caption": "x"}', "{oops"], (), r"generated.jsonl:2: not valid JSON"),
        (MOVIE_B, [{"ad_id": 7, "caption": "x"}, {"ad_id": "7", "caption": "y"}], (),
         r"generated.jsonl:2: duplicate ad_id '7' \(first at line 1\)"),
        (MOVIE_B + [{**MOVIE_B[0], "ad_id": 10, "start": 8.0, "end": 2.0}], [], (),
         r"ads.jsonl:4: need seconds 0 <= 'start' <= 'end'"),
        (MOVIE_B + [{**MOVIE_B[0], "ad_id": 11, "ad": " "}], [], (), r"ads.jsonl:4: the AD text .* must be a non-empty"),
        ([{k: v for k, v in MOVIE_B[0].items() if k != "movie_id"}], [], (), r"ads.jsonl:1: missing field 'movie'"),
        (MOVIE_B, [], ("--n", "1"), r"--n must be >= 2"),
    ],
)
def test_unscorable_inputs_are_one_line_errors(tmp_path, capsys, references, predictions, extra, message):
    import re

    gt = write_jsonl(tmp_path / "ads.jsonl", references)
    pred = write_jsonl(tmp_path / "generated.jsonl", predictions)
    code, printed, err = run_cli(capsys, gt, pred, "--similarity", "tfidf", *extra)
    assert code == 2 and printed == ""
    assert len(err.splitlines()) == 1 and err.startswith("lamflow eval ad: error: ")
    assert re.search(message, err), err


# --------------------------------------------------------------------------------------------------
# BERTScore: the official similarity, through bert_score's own loading code
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory):
    """A RoBERTa with random weights and a byte-level BPE vocabulary trained here, saved with save_pretrained:
    the layout of roberta-large, loaded the way bert_score loads it (AutoModel / AutoTokenizer)."""
    torch = pytest.importorskip("torch")
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    directory = tmp_path_factory.mktemp("tiny-roberta")
    texts = [ad["text"] for ad in MOVIE_A] + [ad["ad"] for ad in MOVIE_B]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(directory))
    tokenizer = RobertaTokenizer.from_pretrained(str(directory), model_max_length=64)
    tokenizer.save_pretrained(str(directory))
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=80, pad_token_id=tokenizer.pad_token_id,
                           bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    RobertaModel(config).save_pretrained(str(directory))
    return directory


def test_bertscore_through_bert_score_with_a_local_model_is_the_official_similarity(tmp_path, capsys, tiny_roberta):
    code, printed, err = run_cli(capsys, reference_file(tmp_path), predictions_file(tmp_path), "--k", "1", "--n", "4",
                                 "--bertscore-model", str(tiny_roberta), "--bertscore-layers", "2", "--device", "cpu")
    assert code == 0, err
    result = json.loads(printed)
    assert result["similarity"]["name"] == "bertscore" and result["similarity"]["official"] is True
    assert "note:" not in err
    # Movie A generates every AD exactly: BERTScore F1 of a sentence with itself is 1, above any other pair.
    assert result["per_movie"]["3001_21_JUMP_STREET"]["R@1/4"] == 100.0


def test_bertscore_matrix_equals_bert_score_called_in_the_official_order(tiny_roberta):
    from bert_score import BERTScorer

    generated = ["Jenko opens the door.", "A teacher writes.", "Students dance."]
    references = [ad["text"] for ad in MOVIE_A[:3]]
    matrix = BertScoreSimilarity(str(tiny_roberta), num_layers=2, device="cpu")(generated, references)
    # AutoAD-II's recall_within_neighbours: row i = scorer.score(references, [generated[i]] * n)'s F1.
    scorer = BERTScorer(model_type=str(tiny_roberta), num_layers=2, device="cpu")
    official = np.stack([scorer.score(references, [g] * len(references))[2].numpy() for g in generated])
    np.testing.assert_allclose(matrix, official, rtol=1e-5, atol=1e-6)
    assert matrix.shape == (3, 3) and not np.allclose(matrix, matrix[0, 0])


def test_bertscore_without_local_weights_is_a_clear_error(tmp_path, capsys):
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache("roberta-large", "config.json"), str):
        pytest.skip("roberta-large is in the local Hugging Face cache")
    code, _, err = run_cli(capsys, reference_file(tmp_path), predictions_file(tmp_path), "--device", "cpu")
    assert code == 2
    assert "BERTScore model 'roberta-large' is not available locally" in err
    assert "--bertscore-model /path/to/roberta-large" in err and "--similarity tfidf" in err
    assert len(err.splitlines()) == 1


def test_a_model_bert_score_does_not_know_needs_its_layer(tmp_path, capsys, tiny_roberta):
    code, _, err = run_cli(capsys, reference_file(tmp_path), predictions_file(tmp_path),
                           "--bertscore-model", str(tiny_roberta))
    assert code == 2 and "pass --bertscore-layers" in err
