"""Typed dataclass configs from plain data (YAML, a checkpoint, ``key=value`` overrides).

Loading is strict: an unknown field name or a value of the wrong type raises :class:`ConfigError` naming the
dotted field, the expected type and close matches, because a silently ignored typo (``optim.lrr=1e-3``)
wastes a whole training run. A field that moved into a nested section (``model.mask`` is now
``model.encoder.mask``) is named with its new place. Field types are read from the dataclasses' annotations
(``int``, ``float``, ``str``, ``bool``, ``None``, ``Literal``, unions, ``tuple``, ``dict`` and nested
dataclasses).
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Iterator, Literal, Mapping

import yaml

from lamflow.errors import ConfigError, FieldError


def at_least(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")


@contextlib.contextmanager
def nested(prefix: str, source: str = "config") -> Iterator[None]:
    """Re-raise a component config's :class:`FieldError` (``LAMConfig.dim=...``) under the dotted path the
    user writes (``model.encoder.dim``)."""
    try:
        yield
    except FieldError as error:
        raise ConfigError(
            f"{source}: field '{prefix}.{error.field}' = {error.value!r} is not valid; allowed values: {error.allowed}"
        ) from None


def set_dotted(config: Any, override: str) -> None:
    """Set one ``section.field=value`` on ``config``; the text value is coerced to the field's type."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like section.field=value, e.g. optim.lr=1e-3")
    dotted, text = (part.strip() for part in override.split("=", 1))
    *sections, name = dotted.split(".")
    target: Any = config
    for depth, section in enumerate(sections):
        _check_known(type(target), section, ".".join(sections[:depth]), source="command line")
        target = getattr(target, section)
        if not dataclasses.is_dataclass(target):
            raise ConfigError(f"override {override!r}: {'.'.join(sections[:depth + 1])} is a value, not a section")
    _check_known(type(target), name, ".".join(sections), source="command line")
    hint = typing.get_type_hints(type(target))[name]
    if dataclasses.is_dataclass(hint):
        raise ConfigError(f"override {override!r}: {dotted} is a section; set one of its fields, e.g. {dotted}.x=...")
    setattr(target, name, _coerce(_parse_text(text, hint), hint, dotted, source="command line"))


def build_dataclass(cls: type, raw: Any, prefix: str, source: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: {prefix or 'the top level'} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        _check_known(cls, str(name), prefix, source)
        dotted = f"{prefix}.{name}" if prefix else str(name)
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = build_dataclass(hint, value if value is not None else {}, dotted, source)
        else:
            values[name] = _coerce(value, hint, dotted, source)
    with nested(prefix, source):  # component configs validate themselves when constructed
        return cls(**values)


def _check_known(cls: type, name: str, prefix: str, source: str) -> None:
    known = [f.name for f in dataclasses.fields(cls)]
    if name in known:
        return
    dotted = f"{prefix}.{name}" if prefix else name
    hints = typing.get_type_hints(cls)
    moved = [section for section in known if dataclasses.is_dataclass(hints[section])
             and name in {f.name for f in dataclasses.fields(hints[section])}]
    if moved:  # a field of a component config written at the level above it (the layout before composition)
        new = f"{prefix}.{moved[0]}.{name}" if prefix else f"{moved[0]}.{name}"
        raise ConfigError(f"{source}: field {dotted!r} has moved: write {new!r}")
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(f'{prefix}.{c}' if prefix else c) for c in close)}?" if close else ""
    raise ConfigError(
        f"{source}: unknown field {dotted!r}{hint} (fields of {prefix or 'the top level'}: {', '.join(known)})"
    )


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else _type_name(a) for a in typing.get_args(hint))
        return f"{origin.__name__}[{args}]"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any, dotted: str, source: str) -> Any:
    """Return ``value`` as type ``hint`` or raise a ConfigError naming the field and the expected type."""

    def fail() -> typing.NoReturn:
        raise ConfigError(
            f"{source}: field {dotted!r} expects {_type_name(hint)}, got {type(value).__name__} {value!r}"
        )

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _coerce(value, option, dotted, source)
            except ConfigError:
                continue
        fail()
    if origin is Literal:
        if value in args:
            return value
        fail()
    if hint is type(None):
        return None if value is None else fail()
    if hint is bool:
        return value if isinstance(value, bool) else fail()
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else fail()
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML reads 1e-3 (no dot) as a string; accept anything float() accepts.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                fail()
        fail()
    if hint is str:
        return value if isinstance(value, str) else fail()
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            fail()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{dotted}[{i}]", source) for i, v in enumerate(value))
        if len(value) != len(args):
            fail()
        return tuple(_coerce(v, a, f"{dotted}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, Mapping):
            fail()
        key_type, value_type = args
        return {
            _coerce(k, key_type, f"{dotted} key", source): _coerce(v, value_type, f"{dotted}.{k}", source)
            for k, v in value.items()
        }
    raise TypeError(f"config field {dotted!r} has an unsupported annotation {hint!r}")  # a bug in this file


def _parse_text(text: str, hint: Any) -> Any:
    """Turn a command-line value into python data for ``_coerce``: YAML syntax, plus bare comma lists.

    Strings stay strings when the field accepts a string (so ``run.out_dir=123`` is the folder "123").
    """
    text = text.strip()
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    accepts_str = hint is str or (is_union and str in typing.get_args(hint))
    if accepts_str and text.lower() not in ("null", "none", "~"):
        return text
    # A word the field lists as a choice stays that word: YAML would read `run.amp=off` as False.
    options = typing.get_args(hint) if is_union else (hint,)
    if any(typing.get_origin(option) is Literal and text in typing.get_args(option) for option in options):
        return text
    parsed = yaml.safe_load(text) if text else None
    if typing.get_origin(hint) is tuple and isinstance(parsed, str) and "," in parsed:
        return [yaml.safe_load(part) for part in parsed.split(",")]
    if typing.get_origin(hint) is tuple and isinstance(parsed, (str, int, float)) and not isinstance(parsed, bool):
        return [parsed]
    return parsed


def plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
