"""SOURCES expansion, safe keys and --texts loading (no Dask, no decoding: fast)."""
import json
import re
from pathlib import Path

import fsspec
import pytest

from lamflow.pipelines.keys import assign_keys
from lamflow.pipelines.plan import input_key
from lamflow.pipelines.sources import SourceError, expand_sources, local_copy, source_name
from lamflow.pipelines.texts import load_texts
from real_data import QVHIGHLIGHTS

SAFE = re.compile(r"^[A-Za-z0-9_-]+$")


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path):
    """A small corpus: videos at several depths plus files that are not videos."""
    for name in ["a.mp4", "sub/b.mkv", "sub/deeper/c.webm", "sub/notes.txt", "cover.jpg", "sub/D.MOV"]:
        touch(tmp_path / "corpus" / name)
    return tmp_path / "corpus"


def paths(sources):
    return [s.path for s in sources]


def test_directory_is_searched_recursively_by_video_extension(tree):
    found = paths(expand_sources([str(tree)]))
    assert found == sorted(str(tree / n) for n in ["a.mp4", "sub/D.MOV", "sub/b.mkv", "sub/deeper/c.webm"])


def test_directory_search_honours_custom_extensions(tree):
    assert paths(expand_sources([str(tree)], extensions=(".jpg",))) == [str(tree / "cover.jpg")]


def test_glob_matches_files_and_recursive_double_star(tree):
    assert paths(expand_sources([str(tree / "*.mp4")])) == [str(tree / "a.mp4")]
    assert set(paths(expand_sources([str(tree / "**" / "*.webm")]))) == {str(tree / "sub/deeper/c.webm")}


def test_txt_list_resolves_relative_paths_against_its_folder_and_skips_comments(tree, monkeypatch, tmp_path):
    listing = touch(tree / "list.txt", b"# my videos\na.mp4\n\nsub/b.mkv\n")
    monkeypatch.chdir(tmp_path)  # relative to the list file, not the working directory
    assert paths(expand_sources([str(listing)])) == [str(tree / "a.mp4"), str(tree / "sub/b.mkv")]


def test_existing_paths_with_glob_characters_are_taken_literally_and_globs_still_expand(tree, tmp_path):
    dated = touch(tree / "video [2020].mp4")
    touch(tree / "video 2.mp4")
    folder = touch(tree / "take [1]" / "x.mp4").parent
    assert paths(expand_sources([str(dated)])) == [str(dated)]  # a file, not a pattern matching "video 2.mp4"
    assert paths(expand_sources([str(folder)])) == [str(folder / "x.mp4")]
    assert paths(expand_sources([str(tree / "video [2].mp4")])) == [str(tree / "video 2.mp4")]  # no such file: a glob
    assert paths(expand_sources([str(tree / "video*.mp4")])) == [str(tree / "video 2.mp4"), str(dated)]
    listing = touch(tmp_path / "list [v2].txt", f"{dated}\n".encode())
    assert paths(expand_sources([str(listing)])) == [str(dated)]
    with pytest.raises(SourceError, match="matched no files and no file has that exact name"):
        expand_sources([str(tree / "video [3].mp4")])


def test_txt_comment_lines_start_with_hash_and_a_hash_named_file_is_given_as_dot_slash(tree):
    hashed = touch(tree / "#1 take.mp4")
    listing = touch(tree / "list.txt", b"  # indented comment\n#1 take.mp4\n./#1 take.mp4\na.mp4 # not a comment\n")
    touch(tree / "a.mp4 # not a comment")
    assert paths(expand_sources([str(listing)])) == [str(hashed), str(tree / "a.mp4 # not a comment")]


def test_csv_and_jsonl_rows_have_no_comments(tree):
    hashed = touch(tree / "#1 take.mp4")
    csv_list = touch(tree / "list.csv", b"path\n#1 take.mp4\n")
    jsonl_list = touch(tree / "list.jsonl", json.dumps({"path": "#1 take.mp4"}).encode())
    assert paths(expand_sources([str(csv_list)])) == paths(expand_sources([str(jsonl_list)])) == [str(hashed)]


def test_extract_help_documents_the_list_file_and_literal_path_rules(capsys):
    from lamflow.cli import main

    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "a line whose first non-blank character is '#' is a comment" in text and "./#name" in text
    assert "no comments" in text and "A path that exists is taken literally" in text


def test_csv_list_keeps_metadata_columns(tree):
    listing = touch(tree / "list.csv", b"path,label,key\na.mp4,cat,clip-a\nsub/b.mkv,dog,\n")
    sources = expand_sources([str(listing)])
    assert [(s.path, s.metadata) for s in sources] == [
        (str(tree / "a.mp4"), {"label": "cat", "key": "clip-a"}),
        (str(tree / "sub/b.mkv"), {"label": "dog", "key": ""}),
    ]


def test_jsonl_list_accepts_other_path_column_names(tree):
    rows = [{"video_path": str(tree / "a.mp4"), "split": "train"}, {"video_path": "sub/b.mkv", "split": "val"}]
    listing = touch(tree / "list.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    sources = expand_sources([str(listing)])
    assert [(s.path, s.metadata["split"]) for s in sources] == [(str(tree / "a.mp4"), "train"), (str(tree / "sub/b.mkv"), "val")]


def test_list_without_path_column_names_the_accepted_columns(tree):
    listing = touch(tree / "bad.csv", b"name,label\na.mp4,cat\n")
    with pytest.raises(SourceError, match=r"bad.csv.*no path column.*'path'"):
        expand_sources([str(listing)])


def test_missing_source_empty_glob_and_videoless_directory_are_clear_errors(tree, tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        expand_sources([str(tmp_path / "nope.mp4")])
    with pytest.raises(SourceError, match="matched no files"):
        expand_sources([str(tree / "*.avi")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no files with a media extension"):
        expand_sources([str(tmp_path / "empty")])


def test_an_input_reached_twice_is_kept_once_with_its_first_metadata(tree):
    listing = touch(tree / "list.csv", b"path,label\na.mp4,cat\n")
    sources = expand_sources([str(listing), str(tree), str(tree / "*.mp4")])
    assert paths(sources).count(str(tree / "a.mp4")) == 1
    assert sources[0].metadata == {"label": "cat"}


def test_fsspec_urls_are_listed_and_staged_to_a_local_file():
    fs = fsspec.filesystem("memory")
    fs.pipe("/lamflow-test/videos/x.mp4", b"remote bytes")
    fs.pipe("/lamflow-test/videos/readme.md", b"not a video")
    sources = expand_sources(["memory://lamflow-test/videos"])
    assert len(sources) == 1  # memory:// spells its root with an extra slash: compare the ends
    assert sources[0].path.startswith("memory://") and sources[0].path.endswith("lamflow-test/videos/x.mp4")
    with local_copy(sources[0].path) as local:
        assert Path(local).read_bytes() == b"remote bytes"
    assert not Path(local).exists()  # staged copies are cleaned up


def test_source_name_is_the_path_relative_to_where_the_input_was_found_without_extension():
    assert source_name("/data/clips/movie.part1.mp4") == "movie.part1"
    assert source_name("/data/clips/a/movie.mp4", "/data/clips") == "a/movie"
    assert source_name("/elsewhere/movie.mp4", "/data/clips") == "movie"
    assert source_name("s3://bucket/v/abc.mkv") == "abc"
    assert source_name("s3://bucket/v/x/abc.mkv", "s3://bucket/v") == "x/abc"
    assert source_name("https://host/v/abc.mp4?sig=1") == "abc"


def test_names_and_keys_come_from_each_input_alone(tree):
    # The same file gets the same name and key whatever else is extracted with it.
    alone = expand_sources([str(tree / "sub")])
    together = expand_sources([str(tree)])
    assert {s.name for s in alone} == {"b", "D", "deeper/c"}
    assert {s.name for s in together} == {"a", "sub/b", "sub/D", "sub/deeper/c"}
    assert {s.path: input_key(s) for s in together} == {
        str(tree / "a.mp4"): "a_mp4", str(tree / "sub/b.mkv"): "sub_b_mkv", str(tree / "sub/D.MOV"): "sub_D_MOV",
        str(tree / "sub/deeper/c.webm"): "sub_deeper_c_webm"}
    assert [s.name for s in expand_sources([str(tree / "sub" / "*.mkv")])] == ["b"]


def test_two_inputs_that_would_share_a_key_are_refused_naming_both():
    with pytest.raises(SourceError, match=r"'x' <- /a/x\.m4a, /a/x\.mp3.*'key' column"):
        assign_keys([("/a/x.mp3", "x"), ("/a/x.m4a", "x"), ("/a/y.mp4", "y")])
    with pytest.raises(SourceError, match="'x_y' <- /c/x y.mp4, /d/x_y.mp4"):
        assign_keys([("/c/x y.mp4", "x y"), ("/d/x_y.mp4", "x_y")])


def test_keys_fixed_by_an_earlier_run_are_kept_and_a_new_input_may_not_take_them():
    assert assign_keys([("/old/x.mp4", "x")], taken={"/old/x.mp4": "x-1a2b3c4d"}) == {"/old/x.mp4": "x-1a2b3c4d"}
    with pytest.raises(SourceError, match="'x' <- /new/x.mp4, /old/x.mp4"):
        assign_keys([("/new/x.mp4", "x")], taken={"/old/x.mp4": "x"})


def test_texts_from_a_qvhighlights_annotation_file_are_grouped_by_video_name(tmp_path):
    real = QVHIGHLIGHTS / "highlight_val_release.jsonl"
    rows = [json.loads(line) for line in real.read_text().splitlines()[:3]] if real.exists() else [
        {"qid": 1, "query": "a man talks", "vid": "abc_0.0_150.0"}, {"qid": 2, "query": "a dog", "vid": "abc_0.0_150.0"}]
    path = tmp_path / "ann.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = load_texts(path)
    for row in rows:
        assert {"id": str(row["qid"]), "text": row["query"]} in texts[row["vid"]]


def test_texts_without_a_text_column_name_the_line_and_columns(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"vid": "a", "qid": 1}) + "\n")
    with pytest.raises(ValueError, match=r"t.jsonl:1 has no text column.*'query'"):
        load_texts(path)
