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
