"""`lamflow inspect`: summaries of real extraction/import outputs and the problems it must flag."""
import json
import shutil

import h5py
import numpy as np

from lamflow.cli import main
from lamflow.contract import Record
from lamflow.pipelines.extract import run_extraction
from lamflow.pipelines.feature_files import ImportOptions
from lamflow.pipelines.h5io import import_h5
from lamflow.pipelines.inspect import format_report, inspect_output
from lamflow.pipelines.manifest import OutputDir
from lamflow.pipelines.settings import ExtractSettings
from media import make_media, rewrite_mp4_durations


def test_inspect_summarises_streams_notes_and_failures_of_an_extraction(tmp_path, capsys):
    videos = tmp_path / "videos"
    make_media(videos / "with_audio.mp4", duration=2.0, size="96x72", rate=10)
    make_media(videos / "no_audio.mp4", duration=3.0, size="96x72", rate=10, audio=False)
    rewrite_mp4_durations(make_media(videos / "edited.mp4", duration=1.0, size="96x72", rate=10), 400.0)
    (videos / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "out"
    # workers=1 without a scheduler: the embedded LocalCluster path
    run_extraction([str(videos)], out, ExtractSettings(clip_model="lamflow-tiny"), workers=1, progress=False)

    report = inspect_output(out)
    assert (report["samples"], report["shards"], report["inputs"], report["ok"], report["failed"]) == (3, 1, 4, 3, 1)
    assert report["streams"]["video"]["dtypes"] == {"float16": 3}
    assert report["streams"]["video"]["trailing_shapes"] == {"[64]": 3}
    assert (report["streams"]["video"]["length_min"], report["streams"]["video"]["length_max"]) == (1, 3)
    assert report["streams"]["audio"]["empty"] == 1
    assert report["notes"]["no audio stream"] == report["notes"]["duration"] == 1
    assert report["failures"]["count"] == 1 and list(report["failures"]["reasons"]) == ["DecodeError"]
    assert list(report["failures"]["examples"]) == [str(videos / "broken.mp4")]
    assert report["problems"] == []

    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 samples in 1 shards" in text and "failed: 1 input(s): DecodeError 1" in text
    assert "  e.g. " + str(videos / "broken.mp4") in text
    assert "video" in text and "(T, 64)" in text
    # notes whole, past their first colon
    assert "note (1 samples): no audio stream: audio.npy is empty (0, 64)\n" in text
    assert ("note (1 samples): duration: the header claims the container 400.000 s, the decoded streams last "
            "1.000 s (video 1.000 s, audio 1.000 s); duration, token counts and timestamps follow the decoded "
            "streams\n") in text


def test_inspect_flags_duplicates_stale_sizes_and_unfinished_shards(tmp_path, capsys):
    path = tmp_path / "feats.h5"
    with h5py.File(path, "w") as h5:
        for i in range(3):
            h5.create_dataset(f"m{i}", data=np.ones((4, 8), np.float32))
    out = tmp_path / "out"
    import_h5(path, out, ImportOptions(fps=1.0))
    assert inspect_output(out)["problems"] == []

    shutil.copy(out / "shards" / "shard-000000.tar", out / "shards" / "shard-000001.tar")
    (out / "shards" / ".shard-000002.tar.tmp").write_bytes(b"")
    report = inspect_output(out)
    assert report["samples"] == 6
    assert any("key 'm0' appears 2 times" in p for p in report["problems"])
    assert any("sizes.json disagrees" in p for p in report["problems"])
    assert any(".shard-000002.tar.tmp" in p for p in report["problems"])
    assert "PROBLEM:" in format_report(report)
    assert main(["inspect", str(out)]) == 1
    capsys.readouterr()


def test_inspect_reads_a_single_shard_file(tmp_path):
    path = tmp_path / "feats.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("m", data=np.ones((4, 8), np.float16))
    import_h5(path, tmp_path / "out", ImportOptions(fps=2.0))
    report = inspect_output(tmp_path / "out" / "shards" / "shard-000000.tar")
    assert report["samples"] == 1 and report["streams"]["video"]["dtypes"] == {"float16": 1}


def test_many_failures_are_counted_by_reason_with_a_few_examples_not_listed_one_per_line(tmp_path, capsys):
    """At 10^7 inputs 1% failing is 10^5 failures: inspect prints a count per reason, the first few, and
    where all of them are (the manifest), never one line per failure."""
    out = tmp_path / "out"
    output = OutputDir(out, {"kind": "video", "settings": {}, "texts": None})
    output.append([Record(f"v{i}", f"/videos/v{i}.mp4", "error", error=f"DecodeError: /videos/v{i}.mp4: moov atom not found")
                   for i in range(60)] + [Record("w", "/videos/w.mp4", "error", error="KilledWorker: worker died")])
    output.write_summaries()
    output.close()
    assert main(["inspect", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "failed: 61 input(s): DecodeError 60, KilledWorker 1" in lines
    assert sum(line.startswith("  e.g. ") for line in lines) == 5
    assert "  all 61 are in manifest.jsonl (status error)" in lines
    assert len(lines) < 15
    stats = json.loads((out / "stats.json").read_text())
    assert stats["failure_reasons"] == {"DecodeError": 60, "KilledWorker": 1} and len(stats["failures"]) == 5
