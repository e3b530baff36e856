"""The token rates a shard set was extracted at (video tokens per second, seconds per audio token), and the
check that a run's training and validation shards share them.

A model learns its time embedding and how many tokens a second holds from its training shards; validation
shards extracted at another rate give it tokens it never saw spaced that way, and the numbers are wrong
without any error. The check reads the rates from the records of each set and refuses the pair in one line.

Where the rates are recorded: every sample's ``meta.json``. ``lamflow extract`` writes the run's settings
(``settings.fps``, ``settings.audio_hop``); ``lamflow import-h5`` / ``import-npz`` write the imported stream's
rows per second (``provenance.<stream>.fps``; an audio import's hop is its inverse). The first sample speaks
for its set: a run has one setting (a resume under other settings is refused). A rate a set does not record
(image runs, shards written by other tools) is not compared.
"""
from __future__ import annotations

import logging
import math
import tarfile
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Mapping

from lamflow.contract import META, decode_meta, iter_members
from lamflow.datasets.loader import StreamingLoader
from lamflow.datasets.shardlist import ShardSet
from lamflow.errors import ConfigError, DataFileError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenRates:
    """How densely a shard set's media streams are tokenised; None: the set does not record it."""

    fps: float | None = None  # video tokens per second
    audio_hop: float | None = None  # seconds per audio token


def _positive(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def meta_rates(meta: Mapping[str, Any]) -> TokenRates:
    """The rates one sample's ``meta.json`` records (see the module docstring)."""
    settings = meta.get("settings") if isinstance(meta.get("settings"), Mapping) else {}
    if "fps" in settings or "audio_hop" in settings:  # lamflow extract: the run's settings
        return TokenRates(_positive(settings.get("fps")), _positive(settings.get("audio_hop")))
    provenance = meta.get("provenance") if isinstance(meta.get("provenance"), Mapping) else {}

    def imported_fps(stream: str) -> float | None:
        entry = provenance.get(stream)
        return _positive(entry.get("fps")) if isinstance(entry, Mapping) else None

    audio_fps = imported_fps("audio")
    return TokenRates(imported_fps("video"), 1 / audio_fps if audio_fps else None)


def shard_rates(shards: ShardSet) -> TokenRates:
    """The rates of a shard set: those its first sample's ``meta.json`` records (only that member is read)."""
    url = next((shard.url for shard in shards if shard.num_samples), None)
    if url is None:
        return TokenRates()
    try:
        with closing(iter_members(url)) as members:  # the first sample's members come first
            for _, field, tar, member in members:
                if field == META:
                    return meta_rates(decode_meta(tar.extractfile(member).read(), META))
    except (OSError, tarfile.TarError, EOFError, DataFileError) as error:
        log.warning("shard %s: cannot read the first sample's %s (%s); its token rates are not checked", url, META, error)
    return TokenRates()


# (stream, rate, how a difference reads): a rate is compared when both loaders read its stream.
_COMPARED = (("video", "fps", "fps {:g} vs {:g} (video tokens per second)"),
             ("audio", "audio_hop", "audio hop {:g} s vs {:g} s (seconds per audio token)"))


def rate_differences(train: TokenRates, val: TokenRates, streams: set[str]) -> list[str]:
    """How ``train`` and ``val`` differ on the rates of ``streams`` that both record."""
    return [wording.format(ours, theirs) for stream, rate, wording in _COMPARED
            if stream in streams and (ours := getattr(train, rate)) is not None
            and (theirs := getattr(val, rate)) is not None and not math.isclose(ours, theirs, rel_tol=1e-9)]


def check_same_rates(train: StreamingLoader, val: StreamingLoader) -> None:
    """Raise :class:`ConfigError` (one line naming both shard sets and both values) when the shards of the
    ``train`` and ``val`` loaders were extracted at different token rates on a stream both loaders read."""
    streams = set(train.config.streams) & set(val.config.streams)
    differences = rate_differences(shard_rates(train.shards), shard_rates(val.shards), streams)
    if differences:
        raise ConfigError(
            f"the train shards {train.spec!r} and the val shards {val.spec!r} were extracted at different token "
            f"rates: {'; '.join(differences)}; a model trained at one rate misreads the other's tokens: validate on "
            "shards extracted with the train shards' --fps and --audio-hop"
        )
