"""Running the ffmpeg binary in a child process, for probing and decoding media.

Everything runs in a child process (built with ffmpeg-python), so a file that crashes or hangs the
decoder cannot take the calling worker down: crashes surface as a non-zero exit status, hangs are cut
by timeouts, and both become :class:`DecodeError` naming the file. ffmpeg's own error lines are kept
(the first and last few) and :func:`ffmpeg_reason` picks the one that explains a failure.
"""
from __future__ import annotations

import functools
import os
import re
import subprocess
import threading
import time
from collections import deque
from typing import Sequence

PROBE_TIMEOUT_S = 30.0
# A decode is cut when ffmpeg produces no output for this long (a hung decoder); slow-but-moving is fine.
STALL_TIMEOUT_S = 60.0
MAX_MESSAGES = 20  # ffmpeg error lines kept from the start and from the end (a damaged file can print thousands)
# ffmpeg's stderr lines that never explain a failure: repeat counters, progress lines, and the CLI's
# wrap-up after the real error ("Error marking filters as finished", "Conversion failed!").
_NOISE = re.compile(
    r"Last message repeated \d+ times?|^(frame|size)=\s*\S+.*time=|Error marking filters as finished"
    r"|^Conversion failed!?$|^Error (while filtering|closing file|writing trailer)"
)
# Words of a line that names what is wrong with the input, most telling first.
_CAUSE_WORDS = (
    ("invalid", "no such", "could not", "not found", "corrupt", "truncat", "partial file", "permission denied",
     "unsupported", "end of file", "does not contain", "unknown"),
    ("error", "failed", "cannot", "can't"),
)


class DecodeError(Exception):
    """A media file could not be probed or decoded; the message names the file and the reason."""


@functools.lru_cache(maxsize=1)
def ffmpeg_version() -> str:
    """First line of ``ffmpeg -version`` (recorded in provenance); cached per process."""
    out = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    return out.stdout.splitlines()[0].strip() if out.stdout else "unknown"


def ffmpeg_input(path: str) -> str:
    """The input name to hand ffmpeg: local files get the file: protocol, so a name containing a colon
    ('clip:1.mp4', common in scraped corpora) is not mistaken for a protocol; URLs pass through."""
    return f"file:{path}" if os.path.exists(path) else str(path)


def ffmpeg_reason(lines: Sequence[str]) -> str:
    """The stderr line that explains a failure: the last one naming an error ("Invalid data found when
    processing input", "No such file or directory", "could not find codec parameters"), else the last
    line that is not noise; never a repeat counter ("Last message repeated 2 times") or a progress line."""
    useful = [line.strip() for line in lines if line.strip() and not _NOISE.search(line)]
    for words in _CAUSE_WORDS:
        for line in reversed(useful):
            if any(word in line.lower() for word in words):
                return line
    return useful[-1] if useful else "no message"


class FfmpegPipe:
    """An ffmpeg child whose stdout is read in sized chunks, with stderr drained and a stall watchdog."""

    def __init__(self, args: list[str], path: str, stall_timeout: float, pass_fds: Sequence[int] = ()):
        self.path = path
        self.stall_timeout = stall_timeout
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=tuple(pass_fds)
        )
        # ffmpeg's error lines: the first and the last MAX_MESSAGES (a fatal error usually comes last).
        self._head: list[str] = []
        self._tail: deque[str] = deque(maxlen=MAX_MESSAGES)
        self.message_count = 0
        self._stalled = False
        self._waiting_since: float | None = None
        self._done = threading.Event()
        # stderr must be drained concurrently, or a chatty corrupt file fills the pipe and deadlocks ffmpeg.
        self._drainer = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drainer.start()
        threading.Thread(target=self._watchdog, daemon=True).start()

    @property
    def messages(self) -> list[str]:
        return self._head + list(self._tail)

    def _drain_stderr(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").strip()
            if not line or _NOISE.search(line):
                continue
            self.message_count += 1
            (self._head.append if len(self._head) < MAX_MESSAGES else self._tail.append)(line)

    def _watchdog(self) -> None:
        while not self._done.wait(0.5):
            since = self._waiting_since
            if since is not None and time.monotonic() - since > self.stall_timeout:
                self._stalled = True
                self.proc.kill()
                return

    def read(self, nbytes: int) -> bytearray:
        """Up to ``nbytes`` bytes (a writable buffer); fewer only at the end of the stream."""
        buffer = bytearray(nbytes)
        view = memoryview(buffer)
        got = 0
        self._waiting_since = time.monotonic()
        try:
            while got < nbytes:
                n = self.proc.stdout.readinto(view[got:])
                if not n:
                    break
                got += n
        finally:
            self._waiting_since = None
            view.release()
        if got < nbytes:
            del buffer[got:]
        return buffer

    def finish(self, what: str) -> list[str]:
        """Wait for ffmpeg to exit and return its error lines; raise DecodeError if it failed or stalled."""
        try:
            self.proc.wait(timeout=self.stall_timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._stalled = True
        self._done.set()
        self._drainer.join(timeout=5)
        if self._stalled:
            raise DecodeError(f"{self.path}: ffmpeg {what} stalled for {self.stall_timeout:.0f} s and was killed")
        if self.proc.returncode != 0:
            raise DecodeError(
                f"{self.path}: ffmpeg {what} failed (exit {self.proc.returncode}): {ffmpeg_reason(self.messages)}"
            )
        return self.messages

    def close(self) -> None:
        """Stop ffmpeg if still running (consumer gave up early) without leaking the process."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._done.set()
        self.proc.stdout.close()
