"""Failed inputs told to people at any corpus size: a count per reason and the first few, never one line
per failure (1% of 10^7 inputs is 10^5 lines); the manifest holds every one."""
from __future__ import annotations

import re
from collections import Counter
from typing import Mapping

SHOWN_FAILURES = 5  # examples printed after the counts
_EXCEPTION_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*(?:Error|Exception|Worker|Timeout|Exit))\b")
_REASON_LENGTH = 60


def failure_reason(error: str | None) -> str:
    """What kind of failure an error message is: its exception name (``DecodeError: ...`` -> ``DecodeError``),
    else its first clause, cut short, so failures group into a few reasons."""
    text = (error or "unknown error").strip()
    if match := _EXCEPTION_NAME.match(text):
        return match.group(1)
    clause = re.split(r"[:;(\n]", text, maxsplit=1)[0].strip()
    return clause[:_REASON_LENGTH] or "unknown error"


class FailureTally:
    """Failures counted by reason, with the first few kept whole as examples."""

    def __init__(self) -> None:
        self.reasons: Counter[str] = Counter()
        self.examples: dict[str, str] = {}  # source -> error, the first SHOWN_FAILURES

    def add(self, source: str, error: str | None) -> None:
        self.reasons[failure_reason(error)] += 1
        if len(self.examples) < SHOWN_FAILURES:
            self.examples[source] = error or ""

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def to_json(self) -> dict[str, object]:
        return {"count": self.total, "reasons": dict(self.reasons.most_common()), "examples": self.examples}


def format_failures(reasons: Mapping[str, int], examples: Mapping[str, str], where: str) -> list[str]:
    """Lines for people: the count per reason, the first few failures, and where all of them are."""
    total = sum(reasons.values())
    if not total:
        return []
    counted = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]))
    lines = [f"failed: {total} input(s): {counted}"]
    lines += [f"  e.g. {source}: {error}" for source, error in list(examples.items())[:SHOWN_FAILURES]]
    if total > len(examples):
        lines.append(f"  all {total} are in {where}")
    return lines
