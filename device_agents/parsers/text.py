"""Cleaning of tool output as it is captured or pasted (prefixes, quote marks, indentation)."""

from __future__ import annotations

import math
import re
from typing import List

# trtexec's "[03/11/2022-14:57:03] [I] " and similar "[timestamp] [level] " log prefixes.
_LOG_PREFIX = re.compile(r"^\[[0-9/:.\- ]+\]\s*\[[A-Z]\]\s?")
_QUOTE = re.compile(r"^(?:>\s?)+")


class ParseError(ValueError):
    """The text does not contain the tool output the parser expects."""


def clean_lines(text: str) -> List[str]:
    """Lines without Markdown quote marks, log prefixes, indentation or trailing blanks."""
    out = []
    for raw in text.splitlines():
        line = _QUOTE.sub("", raw.strip())
        line = _LOG_PREFIX.sub("", line)
        out.append(line.strip())
    return out


def number(text: str, what: str = "number") -> float:
    """A finite float from tool text; ParseError (never ValueError) for ``1.2.3``, ``e``, ``1e999``."""
    try:
        value = float(text)
    except ValueError:
        raise ParseError(f"unreadable {what}: {text[:40]!r}") from None
    if not math.isfinite(value):
        raise ParseError(f"{what} is not a finite number: {text[:40]!r}")
    return value
