"""Image folders end to end: `lamflow extract --media image` (Pillow + the tiny CLIP's patch tokens) ->
classification with the LAM encoder and folder labels -> `lamflow predict` -> `lamflow eval classification`."""
import h5py
import numpy as np
import pytest
import torch
from contract_shards import Video, write_extraction_dir
from media import IMAGE_PATTERNS, make_image, make_image_folder
from PIL import Image

from lamflow.cli import main
from lamflow.contract import SHARDS_DIR, final_shards, read_samples
from lamflow.datasets.classification import ClassificationTask, folder_labels
from lamflow.errors import DataFileError
from lamflow.fileio import read_json, read_jsonl
from lamflow.pipelines.clip_encoder import ClipEncoder
from lamflow.pipelines.extract import run_extraction
from lamflow.pipelines.ffmpeg_process import DecodeError
from lamflow.pipelines.images import decode_image, featurize_image
from lamflow.pipelines.manifest import SettingsMismatchError
from lamflow.pipelines.settings import ExtractSettings, ImageSettings
from lamflow.train.checkpoint import latest_checkpoint

TINY = ImageSettings(clip_model="lamflow-tiny")
TOKENS = 1 + 4 * 4  # lamflow-tiny: 64 px, 16-px patches -> class token + 4 x 4 patches
WIDTH = 64  # lamflow-tiny's embed_dim
TRAIN_PER_CLASS, VAL_PER_CLASS = 8, 4


def run_cli(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def clip():
    return ClipEncoder("lamflow-tiny")


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """train/ and val/ image folders (3 classes) extracted by the CLI, one Dask cluster for both runs;
    val/ also holds a truncated JPEG, which must become a recorded failure."""
    from distributed import LocalCluster

    root = tmp_path_factory.mktemp("images")
    make_image_folder(root / "train", TRAIN_PER_CLASS, seed=0)
    make_image_folder(root / "val", VAL_PER_CLASS, seed=1)
    whole = (root / "val" / "red" / "red_00.jpg").read_bytes()
    (root / "val" / "red" / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        for split in ("train", "val"):
            assert main(["extract", str(root / split), "--media", "image", "--clip-model", "lamflow-tiny",
                         "--out", str(root / "feats" / split), "--scheduler", cluster.scheduler_address,
                         "--shard-samples", "8", "--no-progress"]) == 0
    return root


def test_an_image_folder_becomes_patch_token_samples_named_by_class_folder(extracted):
    train = extracted / "feats" / "train"
    records = read_jsonl(train / "manifest.jsonl")
    assert len(records) == 3 * TRAIN_PER_CLASS and {r["status"] for r in records} == {"ok"}
    first = records[0]
    assert (first["key"], first["original_name"]) == ("blue_blue_00_jpg", "blue/blue_00")
    assert first["counts"] == {"image": TOKENS} and first["dims"] == {"image": WIDTH} and first["duration"] == 0.0
    extraction = read_json(train / "extraction.json")
    assert extraction["kind"] == "image"
    assert extraction["settings"] == {"clip_model": "lamflow-tiny", "pretrained": "none", "dtype": "float16"}

    sample = next(read_samples(final_shards(train / SHARDS_DIR)[0]))
    assert sample["image.npy"].shape == (TOKENS, WIDTH) and sample["image.npy"].dtype == np.float16
    assert np.allclose(np.linalg.norm(sample["image.npy"].astype(np.float32), axis=1), 1.0, atol=1e-2)
    assert sample["image_ts.npy"].tolist() == [0.0] * TOKENS
    meta = sample["meta.json"]
    assert meta["original_name"] == "blue/blue_00" and meta["image"]["format"] == "JPEG"
    assert meta["provenance"]["image"]["grid"] == [4, 4] and meta["provenance"]["image"]["decoder"].startswith("Pillow")

    val = {r["original_name"]: r for r in read_jsonl(extracted / "feats" / "val" / "manifest.jsonl")}
    assert val["red/truncated"]["status"] == "error" and "DecodeError" in val["red/truncated"]["error"]
    assert sum(r["status"] == "ok" for r in val.values()) == 3 * VAL_PER_CLASS


def test_lam_classifier_trained_on_folder_labels_beats_chance_on_the_val_folder(extracted, tmp_path):
    feats, run = extracted / "feats", tmp_path / "run"
    assert main([
        "train", "image_classification", f"data.train_shards={feats / 'train'}", f"data.val_shards={feats / 'val'}",
        "data.loader.batch_size=8", "data.loader.num_workers=0", "data.loader.shuffle_buffer=32",
        "model.encoder.dim=32", "model.encoder.depth=2", "model.encoder.heads=2", "model.encoder.max_len=17",
        "data.loader.fixed_lengths={image: 17}",  # lamflow-tiny: 1 + 4 x 4 patches
        "model.encoder.generator_hidden=32", "optim.lr=2e-3", "optim.warmup_steps=5", "optim.max_steps=40",
        "run.eval_every=40", "run.checkpoint_every=40", "run.log_every=10", "run.threads=1", "run.progress=false",
        f"run.out_dir={run}",
    ]) == 0
    predictions, metrics = tmp_path / "val.jsonl", tmp_path / "metrics.json"
    assert main(["predict", str(latest_checkpoint(run / "checkpoints")), "--split", "val", "--out", str(predictions)]) == 0
    assert main(["eval", "classification", "--labels", str(feats / "val"), "--pred", str(predictions),
                 "--out", str(metrics)]) == 0

    scores = read_json(metrics)
    assert scores["num_samples"] == 3 * VAL_PER_CLASS  # the truncated image is in no shard, so in no score
    assert scores["top1"] >= 75.0, scores  # chance: 33.3 % (3 classes)
    rows = read_jsonl(predictions)
    assert all(row["top_labels"][0] in IMAGE_PATTERNS for row in rows)
    val_during_training = [r for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "val"][-1]
    assert val_during_training["top1"] == scores["top1"]


def test_a_video_run_cannot_resume_an_image_run(extracted):
    with pytest.raises(SettingsMismatchError, match="kind: 'image' -> 'video'"):
        run_extraction([str(extracted / "train")], extracted / "feats" / "train",
                       ExtractSettings(clip_model="lamflow-tiny"), extensions=(".jpg",), progress=False)


def test_an_image_run_exports_its_patch_tokens_to_h5_and_names_its_stream_when_asked_for_video(extracted, tmp_path,
                                                                                                  capsys):
    feats = str(extracted / "feats" / "train")
    code, err = run_cli(["export-h5", feats, "--out", str(tmp_path / "video.h5")], capsys)
    assert code == 2 and "has no video stream (it holds ['image'])" in err
    assert main(["export-h5", feats, "--out", str(tmp_path / "image.h5"), "--stream", "image"]) == 0
    with h5py.File(tmp_path / "image.h5") as h5:
        assert h5["red/red_03"].shape == (TOKENS, WIDTH)  # datasets named CLASS/IMAGE, as the images were


def test_patch_tokens_are_the_class_token_then_the_patches_and_row_0_is_the_image_embedding(clip):
    picture = Image.new("RGB", (100, 80), (200, 30, 30))
    tokens = clip.encode_image_tokens([picture])
    assert tokens.shape == (1, TOKENS, WIDTH) and clip.image_grid == (4, 4)
    pixels = clip.preprocess(picture).unsqueeze(0)
    with torch.no_grad():
        embedding = clip.model.encode_image(pixels, normalize=True).numpy()
    assert np.allclose(tokens[0, 0], embedding[0], atol=1e-5)
    assert not np.allclose(tokens[0, 1], tokens[0, 0], atol=1e-3)  # patches are not copies of the class token


def test_decoding_records_what_was_read_and_refuses_what_is_not_an_image(tmp_path, clip):
    path = make_image(tmp_path / "stripes.png", "stripes", np.random.default_rng(0))
    sample = featurize_image(str(path), "stripes", TINY, clip)
    assert sample["meta.json"]["image"]["format"] == "PNG" and sample["meta.json"]["counts"] == {"image": TOKENS}
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(DecodeError, match="not a readable image"):
        decode_image(str(tmp_path / "notes.jpg"))


def test_image_runs_refuse_video_options_and_directories_hint_at_the_other_kind(tmp_path, capsys):
    make_image(tmp_path / "photos" / "cat" / "a.jpg", "red", np.random.default_rng(0))
    out = str(tmp_path / "out")
    code, err = run_cli(["extract", str(tmp_path / "photos"), "--media", "image", "--fps", "2", "--out", out], capsys)
    assert code == 2 and "--fps apply to video runs" in err
    code, err = run_cli(["extract", str(tmp_path / "photos"), "--media", "image", "--texts", "q.jsonl", "--out", out], capsys)
    assert code == 2 and "--texts apply to video runs" in err
    code, err = run_cli(["extract", str(tmp_path / "photos"), "--out", out], capsys)
    assert code == 2 and "holds image files (pass --media image to extract them)" in err


def test_folder_labels_come_from_the_first_name_component_and_classes_from_the_training_dir(tmp_path):
    train = write_extraction_dir(tmp_path / "train", [[Video("cat/a"), Video("dog/b"), Video("cat/sub/c")]])
    val = write_extraction_dir(tmp_path / "val", [[Video("dog/d")]])
    assert folder_labels(train) == {"cat_a": "cat", "dog_b": "dog", "cat_sub_c": "cat"}
    task = ClassificationTask.from_folders(val, classes_from=train)
    assert task.class_names == ["cat", "dog"] and task.label_of == {"dog_d": 1}  # numbered like training

    unseen = write_extraction_dir(tmp_path / "unseen", [[Video("bird/e")]])
    with pytest.raises(DataFileError, match=r"label\(s\) \['bird'\] are not among the 2 classes"):
        ClassificationTask.from_folders(unseen, classes_from=train)
    flat = write_extraction_dir(tmp_path / "flat", [[Video("a"), Video("cat/b")]])
    with pytest.raises(DataFileError, match="named 'a', not CLASS/IMAGE"):
        folder_labels(flat)
    with pytest.raises(DataFileError, match="every sample is in the folder 'dog', one class"):
        ClassificationTask.from_folders(val, classes_from=val)
    with pytest.raises(DataFileError, match="is not a directory"):
        folder_labels(tmp_path / "train" / "shards" / "shard-000000.tar")
