"""A MAD-style dataset (frames h5 + language h5 + MAD json annotations, files in MAD's layout) imported and
trained without re-extraction: the text store, the sentence-id join, masked saliency, the window cut."""
import json
import pickle

import numpy as np
import pytest
import torch
from lamflow.datasets.loader import LoaderConfig, StreamingLoader
from lamflow.datasets.qvhighlights import AnnotationError, QVHighlightsQuery, QVHighlightsTask, is_mad_file, load_queries
from lamflow.datasets.stream import decode_sample
from lamflow.datasets.texts import MissingTexts, TextStore
from lamflow.pipelines.feature_files import ImportOptions
from lamflow.pipelines.h5io import import_h5
from lamflow.train.checkpoint import latest_checkpoint, load_checkpoint
from lamflow.train.config import ModelConfig, load_config
from lamflow.train.tasks.qvhighlights import moment_loss
from lamflow.train.predict import predict_checkpoint
from lamflow.train.run_log import read_metrics
from lamflow.train.trainer import train
from mad_layout import D_FRAMES, D_WORDS, FPS, annotation, write_annotations, write_frames, write_language
from test_trainer import CONFIGS, FRUGAL, SMALL_MODEL
from torch.utils.data import DataLoader

from lamflow.cli import main
from lamflow.contract import raw_samples
from lamflow.errors import ConfigError, DataFileError, LamflowError
from lamflow.fileio import read_jsonl

MOVIES = {"3001_21_JUMP_STREET": 60.0, "3003_40_YEAR_OLD_VIRGIN": 80.0, "1010_TITANIC": 50.0}
JUMP, VIRGIN, TITANIC = MOVIES
TRAIN = {
    "1050": annotation(JUMP, "He enters a store carrying a bicycle tire.", 12.0, 15.5, 60.0),
    "1051": annotation(JUMP, "She looks back at the door.", 40.2, 44.0, 60.0, ext=False),
    "1052": annotation(VIRGIN, "A man jogs past the houses.", 3.0, 6.0, 80.0),
    "1053": annotation(VIRGIN, "The crowd cheers.", 70.0, 79.9, 80.0),
    "1054": annotation(VIRGIN, "He sits down on the couch.", 30.0, 33.0, 80.0),
}
VAL = {
    "2001": annotation(TITANIC, "The ship leaves the harbour.", 20.0, 24.0, 50.0),
    "2002": annotation(TITANIC, "Water floods the corridor.", 44.0, 49.0, 50.0),
}
WINDOW = 20.0


@pytest.fixture(scope="module")
def mad(tmp_path_factory):
    """MAD's three files, and both h5 files imported with `lamflow import-h5` (frames at 5 fps; texts)."""
    root = tmp_path_factory.mktemp("mad")
    rng = np.random.default_rng(0)
    frames = write_frames(root / "CLIP_frames_features_5fps.h5", MOVIES, rng)
    words = {sentence: 3 + int(sentence) % 17 for sentence in [*TRAIN, *VAL, "77"]}
    language = write_language(root / "CLIP_language_tokens_features.h5", words, rng)
    import_h5(root / "CLIP_frames_features_5fps.h5", root / "frames", ImportOptions(fps=FPS))
    import_h5(root / "CLIP_language_tokens_features.h5", root / "texts", ImportOptions(stream="text", shard_samples=3))
    return {"root": root, "frames": frames, "language": language, "frames_dir": root / "frames", "texts": root / "texts",
            "train": write_annotations(root / "MAD_train.json", TRAIN), "val": write_annotations(root / "MAD_val.json", VAL)}


def movie_sample(mad, movie):
    """The decoded shard sample of ``movie``, as the loader hands it to the task."""
    urls = sorted(str(p) for p in (mad["frames_dir"] / "shards").glob("*.tar"))
    (raw,) = [raw for raw in raw_samples(urls) if raw["__key__"] == movie]
    return decode_sample(raw, ["video", "audio"])


def test_mad_annotations_are_queries_by_sentence_id_without_saliency(mad, tmp_path):
    queries = {q.qid: q for q in load_queries(mad["train"])}
    assert sorted(queries) == [1050, 1051, 1052, 1053, 1054] and is_mad_file(mad["train"])
    query = queries[1050]
    assert (query.vid, query.duration, query.windows, query.token_id) == (JUMP, 60.0, ((12.0, 15.5),), "1050")
    assert query.query == TRAIN["1050"]["sentence"] and not query.saliency_labelled
    assert not query.saliency().any()
    one_line = tmp_path / "qv.jsonl"  # a one-line QVHighlights file is one JSON object too, but not MAD's
    one_line.write_text(json.dumps({"qid": 1, "query": "q", "vid": "v", "duration": 4.0}) + "\n")
    assert not is_mad_file(one_line) and load_queries(one_line)[0].saliency_labelled is False

    # ext_timestamps (what MAD's baselines ground against) wins over timestamps; spans are clamped to the movie.
    entry = {**annotation(JUMP, "x", 1.0, 2.0, 60.0), "ext_timestamps": [1.0, 3.0]}
    clamped = annotation(JUMP, "y", -0.5, 61.0, 60.0, ext=False)
    (first, second) = load_queries(write_annotations(tmp_path / "a.json", {"1": entry, "2": clamped}))
    assert first.windows == ((1.0, 3.0),) and second.windows == ((0.0, 60.0),)
    for entries, fragment in [
        ({"s1": annotation(JUMP, "x", 1, 2, 60)}, "sentence id 's1' is not an integer string"),
        ({"1": {"movie": JUMP, "sentence": "x", "movie_duration": 60.0}}, "field 'timestamps' is missing"),
        ({"1": annotation(JUMP, "x", 70, 80, 60)}, "field 'ext_timestamps' must hold a span inside [0, movie_duration=60]"),
        ({"1": annotation(JUMP, "x", 1, 2, 60), "01": annotation(JUMP, "y", 1, 2, 60)}, "'1' and '01' are the same number"),
        ({"1": annotation(JUMP, "x", 1, 2, 60), "2": [JUMP, "y"]}, "sentence '2': expected an object {movie, sentence"),
    ]:
        with pytest.raises(AnnotationError) as error:
            load_queries(write_annotations(tmp_path / "bad.json", entries))
        assert fragment in str(error.value) and "\n" not in str(error.value)


def test_the_text_store_reads_each_query_by_seeking_in_any_process(mad):
    store = TextStore(mad["texts"])
    assert len(store) == len(mad["language"]) and store.width == D_WORDS
    for sentence, array in mad["language"].items():
        assert np.array_equal(store.tokens(sentence), array)
    assert store.missing(["1050", "9", "77"]) == ["9"]
    # Indexed from tar headers alone: tar patterns work too (the width then comes from the first text).
    tars = sorted(str(p) for p in (mad["texts"] / "shards").glob("*.tar"))
    assert len(tars) == 3 and np.array_equal(TextStore(tars).tokens("2002"), mad["language"]["2002"])
    # DataLoader worker processes (fork) and a pickled copy (spawn) read the same tokens.
    ids = sorted(mad["language"])
    read = list(DataLoader(ids, batch_size=None, num_workers=2, collate_fn=store.tokens))
    assert all(np.array_equal(tokens, mad["language"][i]) for i, tokens in zip(ids, read))
    assert np.array_equal(pickle.loads(pickle.dumps(store)).tokens("1054"), mad["language"]["1054"])
    with pytest.raises(DataFileError, match="text id '1050' is in .* and in sample '1050'"):
        TextStore([tars[0], tars[0]])


def test_a_query_missing_from_the_text_store_is_a_clear_error(mad, tmp_path, capsys):
    partial = {sentence: tokens for sentence, tokens in mad["language"].items() if sentence != "1052"}
    write_language(tmp_path / "lang.h5", {s: len(t) for s, t in partial.items()}, np.random.default_rng(2))
    import_h5(tmp_path / "lang.h5", tmp_path / "texts", ImportOptions(stream="text"))
    with pytest.raises(MissingTexts, match=r"1 of the 5 query ids of .*MAD_train.json have no tokens in the text store "
                                           r".* e\.g\. '1052'; import the language file that holds them"):
        QVHighlightsTask(mad["train"], text_store=TextStore(tmp_path / "texts"))
    # Through `lamflow train`: one line, before any training.
    assert main(["train", str(CONFIGS / "qvhighlights_lam.yaml"), f"data.train_shards={mad['frames_dir']}",
                 f"data.train_annotations={mad['train']}", f"data.train_texts={tmp_path / 'texts'}", "data.val_shards=",
                 f"run.out_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lamflow train: error: 1 of the 5 query ids") and len(err.splitlines()) == 1


def test_without_any_source_of_query_tokens_the_error_names_each_source(mad):
    loader = StreamingLoader(mad["frames_dir"], QVHighlightsTask(mad["train"]),
                             LoaderConfig(streams=("text", "video"), batch_size=2), mode="eval")
    with pytest.raises(LamflowError) as error:
        next(iter(loader))
    message = str(error.value)
    assert "no text tokens for this query" in message and "\n" not in message
    assert all(source in message for source in ("--texts", "data.train_texts", "import-h5 LANG.h5 --stream text", "text_encoder"))


def test_the_window_cut_holds_the_moment_rebases_times_and_is_seeded(mad):
    store = TextStore(mad["texts"])
    task = QVHighlightsTask(mad["train"], text_store=store, window_seconds=WINDOW, placement="random")
    sample = movie_sample(mad, VIRGIN)
    frames = mad["frames"][VIRGIN]

    def cut(task):
        return {item["query"].qid: item for item in task.items(sample, VIRGIN)}

    items = cut(task)
    for qid, item in items.items():
        original = load_queries(mad["train"])[qid - 1050]
        start, (st, ed) = item["window_start"], original.windows[0]
        assert 0 <= start <= 80.0 - WINDOW and start <= st and ed <= start + WINDOW + 1e-9  # the moment is inside
        assert item["duration"] == WINDOW and item["query"].duration == WINDOW
        (window,) = item["query"].windows
        assert window == pytest.approx((st - start, ed - start))
        times = item["timestamps"]["video"]
        assert len(times) in (WINDOW * FPS, WINDOW * FPS + 1) and 0 <= times[0] < 1 / FPS and times[-1] < WINDOW
        rows = np.round((times + start) * FPS).astype(int)  # the frames of the movie these tokens are
        assert np.array_equal(item["streams"]["video"], frames[rows])
        assert np.array_equal(item["streams"]["text"], mad["language"][str(qid)])  # text is not cut
        assert item["meta"]["original_name"] == VIRGIN  # the rest of the sample is passed on
    # Random placement: drawn from (seed, epoch, qid), so a resumed epoch cuts the same windows.
    task.start_epoch(0, 1)
    moved = cut(task)
    assert any(moved[q]["window_start"] != items[q]["window_start"] for q in items)
    task.start_epoch(0, 0)
    assert {q: i["window_start"] for q, i in cut(task).items()} == {q: i["window_start"] for q, i in items.items()}
    # Fixed placement (validation): one window per query, whatever the epoch.
    fixed = QVHighlightsTask(mad["train"], text_store=store, window_seconds=WINDOW, placement="fixed")
    before = {q: i["window_start"] for q, i in cut(fixed).items()}
    fixed.start_epoch(3, 7)
    assert {q: i["window_start"] for q, i in cut(fixed).items()} == before

    # A moment longer than the window: the window is centred on it and the moment cut to the window.
    long = write_annotations(mad["root"] / "long.json", {"1052": annotation(VIRGIN, "x", 10.0, 40.0, 80.0)})
    (item,) = QVHighlightsTask(long, text_store=store, window_seconds=WINDOW).items(sample, VIRGIN)
    assert item["window_start"] == 15.0 and item["query"].windows == ((0.0, WINDOW),)
    # A movie no longer than the window is not cut.
    (item,) = [i for i in QVHighlightsTask(mad["train"], text_store=store, window_seconds=90.0).items(sample, VIRGIN)
               if i["query"].qid == 1052]
    assert item["window_start"] == 0.0 and len(item["streams"]["video"]) == len(frames) and item["duration"] == 80.0


def test_queries_without_saliency_are_masked_and_an_all_masked_batch_trains(mad):
    task = QVHighlightsTask(mad["train"], text_store=TextStore(mad["texts"]), window_seconds=WINDOW)
    mad_items = list(task.items(movie_sample(mad, JUMP), JUMP))
    labelled = QVHighlightsQuery(9, "qv", "v", 6.0, ((0.0, 2.0),), (0,), ((4, 4, 4),))
    mixed = task.collate([{"query": labelled, "window_start": 0.0}, mad_items[0]])
    assert mixed["saliency_padding"].tolist() == [[False, False, False] + [True] * 7, [True] * 10]

    def loss_and_saliency_gradient(batch):
        size, clips = batch["saliency"].shape
        times = torch.arange(20, dtype=torch.float32).expand(size, 20) * 0.5
        outputs = {"foreground": torch.zeros(size, 20, requires_grad=True), "offsets": torch.ones(size, 20, 2, requires_grad=True),
                   "saliency": torch.zeros(size, clips, requires_grad=True), "token_times": times,
                   "token_padding": torch.zeros(size, 20, dtype=torch.bool)}
        terms = moment_loss(outputs, {**batch, "duration": batch["query_durations"].float()}, ModelConfig())
        terms["loss"].backward()
        return terms, outputs["saliency"].grad

    terms, gradient = loss_and_saliency_gradient(mixed)
    assert gradient[0, :3].abs().min() > 0 and not gradient[0, 3:].any() and not gradient[1].any()
    only_mad = task.collate(mad_items[:2])
    terms, gradient = loss_and_saliency_gradient(only_mad)
    assert torch.isfinite(terms["loss"]) and terms["saliency"].item() == 0.0 and not gradient.any()


def test_a_mad_style_dataset_trains_and_predicts_with_the_real_trainer(mad, tmp_path):
    out = tmp_path / "run"
    config = load_config(CONFIGS / "qvhighlights_lam.yaml", [
        f"data.train_shards={mad['frames_dir']}", f"data.train_annotations={mad['train']}", f"data.train_texts={mad['texts']}",
        f"data.val_shards={mad['frames_dir']}", f"data.val_annotations={mad['val']}", f"data.val_texts={mad['texts']}",
        f"data.window_seconds={WINDOW}", "data.loader.streams=[text,video]", "model.downsample={}",
        "data.loader.batch_size=2", "data.eval_batch_size=2", *SMALL_MODEL, *FRUGAL, "optim.max_steps=3",
        "data.loader.num_workers=1",  # the task and its text store work in a DataLoader worker process
        "optim.warmup_steps=1", "run.log_every=1", "run.eval_every=3", "run.progress=false", f"run.out_dir={out}",
    ])
    train(config)
    metrics = read_metrics(out / "metrics.jsonl")
    steps = [r for r in metrics if r["split"] == "train"]
    assert [r["step"] for r in steps] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in steps)
    assert all(r["saliency"] == 0.0 for r in steps)  # MAD has no saliency: masked, not trained towards 0
    (val,) = [r for r in metrics if r["split"] == "val"]
    assert val["items"] == 2 and val["cut_queries"] == 2 and 0 <= val["R@1-IoU=0.5"] <= val["R@5-IoU=0.1"] <= 100
    checkpoint = latest_checkpoint(out / "checkpoints")
    assert load_checkpoint(checkpoint)["input_dims"] == {"text": D_WORDS, "video": D_FRAMES}  # text width from the store

    rows = read_jsonl(out / "predictions" / "val-step-00000003.jsonl")
    assert [(r["qid"], r["vid"]) for r in rows] == [(2001, TITANIC), (2002, TITANIC)]
    for row in rows:
        start, end = row["window"]
        st, ed = VAL[str(row["qid"])]["ext_timestamps"]
        assert end - start == pytest.approx(WINDOW) and start <= st and ed <= end  # the fixed window holds the moment
        assert all(start <= s <= e <= end + 1e-3 for s, e, _ in row["pred_relevant_windows"])  # in movie time
        assert len(row["pred_saliency_scores"]) == WINDOW / 2
    # `lamflow predict` sees the same fixed windows and writes the same lines.
    again = predict_checkpoint(checkpoint, "val", tmp_path / "again.jsonl")
    for first, second in zip(rows, read_jsonl(again)):
        assert first["window"] == second["window"]
        assert np.allclose([w[:2] for w in first["pred_relevant_windows"]], [w[:2] for w in second["pred_relevant_windows"]], atol=1e-3)


def test_the_mad_fields_of_the_config_are_checked():
    with pytest.raises(ConfigError, match=r"data.window_seconds must be a finite number >= 0 \(0 = whole videos\), got -1"):
        load_config(CONFIGS / "qvhighlights_lam.yaml", ["data.window_seconds=-1"])
    with pytest.raises(ConfigError, match="data.train_texts applies to task qvhighlights only"):
        load_config(CONFIGS / "classification.yaml", ["data.train_texts=texts"])
