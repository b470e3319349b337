"""Cleaning of tool output as it is captured or pasted (prefixes, quote marks, indentation)."""

from __future__ import annotations

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
