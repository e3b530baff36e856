"""What survives a machine crash: the fsyncs and renames of a commit, in order, as strace sees a real process
make them. A file's data is synced before its rename, the rename is synced into its folder, and a folder made
for committed files is synced into its parent (a rename or a folder is durable only once its parent is)."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (the Debian package strace)")

_FSYNC = re.compile(r"^f(?:data)?sync\(\d+<(?P<path>[^>]*)>\)\s+= 0$")
_RENAME = re.compile(r'^rename(?:at2?)?\((?:[^"]*)"(?P<old>[^"]+)",(?:[^"]*)"(?P<new>[^"]+)".*\)\s+= 0$')


def synced_and_renamed(code: str, root: Path) -> list[str]:
    """The fsyncs (``fsync PATH``) and renames (``rename OLD -> NEW``) that ``code`` makes under ``root``, in
    order, with paths relative to ``root`` (``.`` for itself)."""
    log = root / "strace.log"
    subprocess.run(["strace", "-f", "-qq", "-y", "-o", str(log), "-e", "trace=fsync,fdatasync,rename,renameat,renameat2",
                    sys.executable, "-c", code], check=True, cwd=root)
    events = []
    for line in log.read_text().splitlines():
        match = _FSYNC.match(call := line.split(None, 1)[1]) or _RENAME.match(call)  # after the pid
        # strace shows a path as the process gave it: a relative one is relative to its working directory, root
        paths = [root / path for path in match.groups()] if match else []
        if paths and all(path.is_relative_to(root) for path in paths):
            name = "fsync" if match.re is _FSYNC else "rename"
            events.append(f"{name} {' -> '.join(str(path.relative_to(root)) for path in paths)}")
    return events


def test_a_file_written_by_another_library_is_synced_before_its_rename_and_the_rename_after_it(tmp_path):
    # h5py, torch.save and ffmpeg write the temp file and close it without a sync; commit_temp syncs it.
    code = ("from pathlib import Path\nfrom lamflow.fileio import commit_temp, temp_path\n"
            "temp_path(Path('features.h5')).write_bytes(b'x' * 100000)\ncommit_temp(Path('features.h5').resolve())")
    assert synced_and_renamed(code, tmp_path) == ["fsync .features.h5.tmp", "rename .features.h5.tmp -> features.h5", "fsync ."]


def test_folders_made_for_an_atomic_write_are_synced_into_their_parents(tmp_path):
    code = "from lamflow.fileio import write_json_atomic\nwrite_json_atomic('run/logs/stats.json', {'ok': 1})"
    assert synced_and_renamed(code, tmp_path) == [
        "fsync .", "fsync run",  # run/ made in ., logs/ made in run/
        "fsync run/logs/.stats.json.tmp", "rename run/logs/.stats.json.tmp -> run/logs/stats.json", "fsync run/logs",
    ]


def test_a_shard_is_synced_before_its_records_and_its_rename_is_synced_into_the_shards_folder(tmp_path):
    code = """
import numpy as np
from lamflow.fileio import write_jsonl_atomic
from lamflow.pipelines.shards import ShardSink

def records(shard, keys):  # what OutputDir does: the records of the shard, durable before its rename
    write_jsonl_atomic('out/records.jsonl', [{'key': key, 'shard': shard} for key in keys])

with ShardSink('out/shards', 0, 1000, 10**9, on_commit=records) as sink:
    for key in ('a', 'b'):
        sink.write({'__key__': key, 'video.npy': np.ones((4, 8), np.float16), 'meta.json': {'source': key}}, key)
"""
    assert synced_and_renamed(code, tmp_path) == [
        "fsync .", "fsync out",  # out/ and out/shards/ made by the sink
        "fsync out/shards/.shard-000000.tar.tmp",  # the tar, ended: complete before any record names it
        "fsync out/.records.jsonl.tmp", "rename out/.records.jsonl.tmp -> out/records.jsonl", "fsync out",
        "fsync out/shards/.shard-000000.tar.tmp",  # commit_temp's own sync: nothing left to write, no cost
        "rename out/shards/.shard-000000.tar.tmp -> out/shards/shard-000000.tar", "fsync out/shards",
    ]
