"""QVHighlightsTask: real annotation files, validation errors, and the join to shards by video name."""
from __future__ import annotations

import json
import math

import pytest
import torch
from contract_shards import D_TEXT, Video, contract_sample, write_extraction_dir

from lamflow.datasets.loader import LoaderConfig, StreamingLoader
from lamflow.datasets.qvhighlights import AnnotationError, QVHighlightsTask, load_queries
from lamflow.errors import DataFileError, LamflowError
from lamflow.fileio import read_jsonl
from real_data import QVHIGHLIGHTS, requires_qvhighlights

VID_A, VID_B = "j7rJstUseKg_360.0_510.0", "NUsG9BgSes0_210.0_360.0"


@requires_qvhighlights
def test_the_real_train_val_and_test_files_load_and_satisfy_the_schema():
    counts = {}
    for split in ("train", "val", "test"):
        queries = load_queries(QVHIGHLIGHTS / f"highlight_{split}_release.jsonl")
        counts[split] = len(queries)
        assert len({q.qid for q in queries}) == len(queries)
        for query in queries:
            assert query.query and query.vid and query.duration > 0
            assert bool(query.windows) == (split != "test")  # the test split has no labels
            assert all(0 <= start < end <= query.duration for start, end in query.windows)
            saliency = query.saliency()
            assert saliency.shape == (math.ceil(query.duration / 2),) and saliency.max() <= 4
            assert len(query.clip_ids) == len(query.scores)
    assert counts == {"train": 7218, "val": 1550, "test": 1542}


@requires_qvhighlights
def test_the_public_test_answers_load_as_the_labelled_test_split():
    answers = load_queries(QVHIGHLIGHTS / "highlight_test_with_gt.jsonl")
    questions = load_queries(QVHIGHLIGHTS / "highlight_test_release.jsonl")
    assert [(q.qid, q.vid, q.query, q.duration) for q in answers] == [
        (q.qid, q.vid, q.query, q.duration) for q in questions
    ]
    assert all(query.windows and query.clip_ids for query in answers)


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


LABELLED = {"qid": 11, "query": "a man talks", "duration": 10, "vid": VID_A, "relevant_windows": [[2, 6]],
            "relevant_clip_ids": [1, 2], "saliency_scores": [[4, 2, 0], [1, 1, 1]]}


@pytest.mark.parametrize("broken, message", [
    ("{not json", "not valid JSON"),
    ({**LABELLED, "qid": "11"}, "field 'qid' must be an int"),
    ({k: v for k, v in LABELLED.items() if k != "vid"}, "field 'vid' is missing"),
    ({**LABELLED, "relevant_windows": [[6, 2]]}, "field 'relevant_windows'"),
    ({**LABELLED, "relevant_windows": [[2, 12]]}, "end <= duration \\(10\\)"),
    ({**LABELLED, "relevant_clip_ids": [1, 5]}, "field 'relevant_clip_ids'.*\\[0, 5\\)"),
    ({**LABELLED, "saliency_scores": [[4, 2, 0]]}, "field 'saliency_scores'"),
    ({k: v for k, v in LABELLED.items() if k != "saliency_scores"}, "field 'saliency_scores' is missing"),
    ({**LABELLED, "qid": 10}, "field 'qid' 10 repeats line 1"),
])
def test_malformed_annotation_lines_are_errors_naming_file_line_and_field(tmp_path, broken, message):
    path = write_jsonl(tmp_path / "ann.jsonl", [{**LABELLED, "qid": 10}, broken])
    # Lines that are not JSON fail in lamflow.fileio's reader; schema errors are AnnotationErrors (both DataFileErrors).
    expected = DataFileError if message == "not valid JSON" else AnnotationError
    with pytest.raises(expected, match=f"ann.jsonl:2: .*{message}"):
        QVHighlightsTask(path)


def test_a_missing_annotation_file_is_an_error_naming_the_accepted_files(tmp_path):
    with pytest.raises(DataFileError, match="nope.jsonl: QVHighlights annotation file .*highlight_test_with_gt.jsonl"):
        QVHighlightsTask(tmp_path / "nope.jsonl")


def dataset(tmp_path, texts=True):
    def texts_of(*pairs):
        return [(str(qid), query, tokens) for qid, query, tokens in pairs] if texts else []

    videos = [
        Video(VID_A, duration=10.0, texts=texts_of((11, "a man talks", 3), (12, "a dog", 2))),
        Video(VID_B, duration=7.0, texts=texts_of((13, "a car", 4))),
        Video("unannotated.video", duration=5.0),
    ]
    root = write_extraction_dir(tmp_path / "extraction", [videos[:2], videos[2:]])
    annotations = write_jsonl(tmp_path / "ann.jsonl", [
        LABELLED,
        {"qid": 12, "query": "a dog", "duration": 10, "vid": VID_A, "relevant_windows": [[0, 2], [8, 10]],
         "relevant_clip_ids": [0, 4], "saliency_scores": [[3, 3, 3], [2, 2, 2]]},
        {"qid": 13, "query": "a car", "duration": 7, "vid": VID_B, "relevant_windows": [[1, 7]],
         "relevant_clip_ids": [3], "saliency_scores": [[4, 4, 1]]},
    ])
    return root, annotations, videos


def eval_batches(root, task, **config):
    config = {"streams": ("text", "video", "audio"), "batch_size": 8, "num_workers": 0, **config}
    loader = StreamingLoader(str(root), task, LoaderConfig(**config), mode="eval")
    return loader, list(loader)


def test_each_query_of_an_annotated_video_becomes_one_item_with_its_targets(tmp_path):
    root, annotations, videos = dataset(tmp_path)
    loader, [batch] = eval_batches(root, QVHighlightsTask(annotations), bucket_by_length=False)
    rows = {qid: row for row, qid in enumerate(batch["qids"])}
    assert sorted(rows) == [11, 12, 13]
    assert len(loader) == 1 and loader.stats["samples_without_items"] == 1  # the unannotated video
    a, b = rows[11], rows[13]
    assert batch["keys"][a] == "j7rJstUseKg_360_0_510_0" and batch["sample_ids"][a] == "11"
    assert batch["queries"][a] == "a man talks"
    assert batch["windows"][a].tolist() == [[2.0, 6.0]] and batch["windows"][rows[12]].shape == (2, 2)
    # mean of the three annotators per 2-s clip, 0 elsewhere; ceil(duration / 2) clips
    assert batch["saliency"][a].tolist() == [0.0, 2.0, 1.0, 0.0, 0.0]
    assert batch["saliency"][b].tolist()[:4] == [0.0, 0.0, 0.0, 3.0]
    assert batch["saliency_padding"][a].tolist() == [False] * 5
    assert batch["saliency_padding"][b].tolist() == [False] * 4 + [True]


def test_query_tokens_come_from_the_shard_text_row_with_the_same_qid(tmp_path):
    root, annotations, videos = dataset(tmp_path)
    _, [batch] = eval_batches(root, QVHighlightsTask(annotations), bucket_by_length=False)
    shard_text = contract_sample(videos[0])["text.npy"]  # rows in meta.json["texts"] order: qid 11, qid 12
    row = batch["qids"].index(12)
    text, padding = batch["streams"]["text"][row], batch["stream_padding"]["text"][row]
    assert torch.equal(text[:2], torch.from_numpy(shard_text[1, :2]))
    assert padding.tolist() == [False, False, True, True]
    assert batch["stream_timestamps"]["text"][row].tolist() == [0.0] * 4


def test_shards_without_query_texts_need_a_text_encoder_and_the_error_says_how(tmp_path):
    root, annotations, _ = dataset(tmp_path / "plain", texts=False)
    with pytest.raises(LamflowError, match="qid 1[123] .*--texts .*ann.jsonl.*text_encoder"):
        eval_batches(root, QVHighlightsTask(annotations))

    def encode(query: str) -> torch.Tensor:  # any callable returning L_t x D_t tokens
        return torch.full((len(query.split()), D_TEXT), float(len(query)))

    _, [batch] = eval_batches(root, QVHighlightsTask(annotations, text_encoder=encode), bucket_by_length=False)
    row = batch["qids"].index(11)
    assert batch["stream_padding"]["text"][row].tolist() == [False, False, False]
    assert torch.all(batch["streams"]["text"][row] == len("a man talks"))


def test_the_test_split_gives_empty_windows_and_zero_saliency(tmp_path):
    root, _, _ = dataset(tmp_path)
    annotations = write_jsonl(tmp_path / "test.jsonl", [{"qid": 11, "query": "a man talks", "duration": 10, "vid": VID_A}])
    _, [batch] = eval_batches(root, QVHighlightsTask(annotations))
    assert batch["qids"] == [11] and batch["windows"][0].shape == (0, 2)
    assert batch["saliency"].tolist() == [[0.0] * 5]


@requires_qvhighlights
def test_shards_of_test_videos_join_the_public_test_answers_with_their_targets(tmp_path):
    answers_file = QVHIGHLIGHTS / "highlight_test_with_gt.jsonl"
    records = read_jsonl(answers_file)
    vids = list(dict.fromkeys(record["vid"] for record in records))[:2]
    expected = {r["qid"]: r for r in records if r["vid"] in vids}
    durations = {r["vid"]: r["duration"] for r in expected.values()}
    root = write_extraction_dir(tmp_path / "extraction", [[Video(vid, duration=durations[vid]) for vid in vids]])

    def encode(query: str) -> torch.Tensor:
        return torch.ones(len(query.split()), D_TEXT)

    _, [batch] = eval_batches(root, QVHighlightsTask(answers_file, text_encoder=encode), bucket_by_length=False)
    assert sorted(batch["qids"]) == sorted(expected)
    for row, qid in enumerate(batch["qids"]):
        record = expected[qid]
        assert batch["windows"][row].tolist() == record["relevant_windows"]
        clip, scores = record["relevant_clip_ids"][0], record["saliency_scores"][0]
        assert batch["saliency"][row, clip].item() == pytest.approx(sum(scores) / 3)
