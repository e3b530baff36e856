"""lamflow.fileio: JSONL reading names file:line; atomic writes leave the old file or the new one."""
import json
from pathlib import Path

import pytest

from lamflow.errors import DataFileError, LamflowError
from lamflow.fileio import (
    atomic_open,
    final_path,
    iter_jsonl,
    read_json,
    read_jsonl,
    temp_path,
    write_json_atomic,
    write_jsonl_atomic,
)


def test_read_jsonl_skips_blank_lines_and_numbers_lines_from_one(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert list(iter_jsonl(path)) == [(1, {"a": 1}), (3, {"a": 2})]
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize("text, message", [
    ('{"a": 1}\n{"a": \n', "a.jsonl:2: not valid JSON"),
    ('{"a": 1}\n[1, 2]\n', "a.jsonl:2: expected a JSON object, got list"),
])
def test_read_jsonl_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "a.jsonl"
    path.write_text(text)
    with pytest.raises(DataFileError, match=message):
        read_jsonl(path)


def test_missing_and_binary_files_are_user_errors(tmp_path):
    with pytest.raises(LamflowError, match="not found"):
        read_jsonl(tmp_path / "missing.jsonl")
    (tmp_path / "b.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DataFileError, match="not UTF-8"):
        read_jsonl(tmp_path / "b.jsonl")
    (tmp_path / "c.json").write_text("{")
    with pytest.raises(DataFileError, match="c.json:1: not valid JSON"):
        read_json(tmp_path / "c.json")


def test_atomic_writes_round_trip_and_leave_no_temp_file(tmp_path):
    write_json_atomic(tmp_path / "sub" / "x.json", {"b": 1, "a": [1.5]})
    assert json.loads((tmp_path / "sub" / "x.json").read_text()) == {"a": [1.5], "b": 1}
    write_jsonl_atomic(tmp_path / "y.jsonl", ({"i": i} for i in range(3)))
    assert read_jsonl(tmp_path / "y.jsonl") == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["sub", "x.json", "y.jsonl"]


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "x.json"
    write_json_atomic(target, {"version": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write('{"version": 2')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"version": 1}
    assert not temp_path(target).exists()
    with pytest.raises(ValueError):  # NaN is not JSON: other tools would reject the file
        write_json_atomic(target, {"loss": float("nan")})
    assert json.loads(target.read_text()) == {"version": 1}


def test_every_writer_that_renames_into_place_uses_one_temp_name():
    assert temp_path("/x/shard-000003.tar").name == ".shard-000003.tar.tmp"
    assert final_path(temp_path("/x/stats.json")) == Path("/x/stats.json")
    assert final_path("/x/stats.json") is None and final_path("/x/.tmp") is None
