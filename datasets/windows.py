"""Cut a long video's streams to a window of time: a MAD query's window (``data.window_seconds``) and an audio
description's context are both a few seconds out of hours of tokens.

The cut keeps the tokens whose timestamps lie in the window, with times relative to the window's start, as
copies: a numpy slice is a view that keeps its whole base array alive, so items waiting in the loader's
shuffle buffer would each pin a whole movie. Task streams (the query text) are not in time and pass through.
Times are compared and rebased in the timestamps' own precision (float32, as the shard contract stores them),
so a token is inside exactly when its stored time is, and no kept token gets a negative time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from lamflow.datasets.stream import TASK_STREAMS


@dataclass(frozen=True)
class WindowCut:
    """The streams inside a window, their times relative to ``start``, and the window's bounds in video time
    (wider than asked when a stream's nearest token lay outside it)."""

    streams: dict[str, np.ndarray]
    timestamps: dict[str, np.ndarray]
    start: float
    end: float


def cut_window(streams: Mapping[str, np.ndarray], timestamps: Mapping[str, np.ndarray], start: float, end: float, *,
               include_end: bool, nearest_to: float | None = None) -> WindowCut:
    """The tokens of every timed stream with times in ``[start, end]`` (``include_end``) or ``[start, end)``.

    ``nearest_to``: a non-empty stream with no token inside keeps its token nearest to this time, and the window
    widens to hold it (an audio description shorter than the frame spacing still sees a frame); None: such a
    stream is cut to nothing.
    """
    kept: dict[str, np.ndarray] = {}
    for name, times in timestamps.items():
        if name in TASK_STREAMS:
            continue
        low, high = times.dtype.type(start), times.dtype.type(end)
        inside = np.flatnonzero((times >= low) & ((times <= high) if include_end else (times < high)))
        if not len(inside) and len(times) and nearest_to is not None:
            inside = np.array([np.abs(times - times.dtype.type(nearest_to)).argmin()])
        kept[name] = inside
    chosen = [timestamps[name][inside] for name, inside in kept.items() if len(inside)]
    start = min([start, *(float(times.min()) for times in chosen)])
    end = max([end, *(float(times.max()) for times in chosen)])
    # Indexing by an index array copies: the cut shares no memory with the sample's arrays.
    cut_streams, cut_times = dict(streams), dict(timestamps)
    for name, inside in kept.items():
        cut_streams[name] = np.take(streams[name], inside, axis=0)
        cut_times[name] = np.take(timestamps[name], inside) - timestamps[name].dtype.type(start)
    return WindowCut(cut_streams, cut_times, start, end)
