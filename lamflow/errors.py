"""The one error type users see: ``lamflow <command>: error: <message>`` and exit status 2.

Every mistake a user can make (a bad config value, a missing or malformed file, data that breaks the
shard contract, a device that is not there) raises a subclass of :class:`LamflowError` whose message
names the field or file and says what to do. ``lamflow.cli.main`` catches it once for every subcommand;
anything else that escapes is a bug and keeps its traceback.

This module imports nothing, so every folder (pipelines, datasets, lam, train) can raise these errors
without depending on another.
"""
from __future__ import annotations


class LamflowError(Exception):
    """A user-facing error: the message alone tells the user what is wrong and how to fix it."""


class DataFileError(LamflowError, ValueError):
    """A file given by the user is missing, unreadable or not in the expected format (message names it)."""


class DeviceError(LamflowError, RuntimeError):
    """The requested device (e.g. cuda) cannot run here; raised before any work starts."""


class ConfigError(LamflowError, ValueError):
    """A configuration that cannot run: the message names the (dotted) field and the allowed values."""


class FieldError(ConfigError):
    """One field of a config dataclass holds a value it does not allow.

    Raised by the component configs (``LAMConfig``, ``LoaderConfig``) with their own field names; a config
    that nests them (``TrainConfig``) re-raises it under the dotted path the user wrote.
    """

    def __init__(self, owner: str, field: str, value: object, allowed: str) -> None:
        self.owner, self.field, self.value, self.allowed = owner, field, value, allowed
        super().__init__(f"{owner}.{field}={value!r} is not valid; allowed values: {allowed}")
