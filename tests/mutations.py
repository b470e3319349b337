"""Hypothesis strategies that damage a valid persisted file, and the check every reader must pass.

`file_damage(doc, text)` draws one of: a value anywhere in the parsed document replaced by
another JSON value (wrong type, huge number, NaN/inf, deep nesting), a key dropped or added,
the schema version changed, or the encoded text truncated, spliced with random bytes
(non-UTF-8 included) or wrapped in deep nesting. `read_or_clear_error` asserts the property
of issue 16: the reader returns, or raises one `Ofa2EdgeError` naming the file; never
another exception, and never a change on disk.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, TypeVar

from hypothesis import strategies as st

from ofa2_edge.core.errors import Ofa2EdgeError

T = TypeVar("T")

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 10**400, 1e308, -1e308, 1e-320]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=16),
    st.sampled_from(["", "..", "../x", "/etc/passwd", "a\x00b", "nan", "inf", "1e999", "\ud800", "é" * 300]),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10,
)


_DEEP = re.compile(r'"?__deep(\d+)__"?')


def _expand_deep(text: str) -> str:
    """Replace each `__deep<n>__` marker by a list nested n deep (JSON and YAML flow syntax
    alike): the encoders cannot write what the readers must survive."""
    return _DEEP.sub(lambda m: "[" * int(m.group(1)) + "0" + "]" * int(m.group(1)), text)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:8]):  # the first items of long lists (weights) are enough
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def doc_mutations(draw: st.DrawFn, doc: Any) -> Any:
    """`doc` (a JSON/YAML tree) with one value replaced, one key dropped or one key added."""
    doc = json.loads(json.dumps(doc))
    paths = [p for p in _paths(doc) if p]
    path = draw(st.sampled_from(paths))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    action = draw(st.sampled_from(["replace", "replace", "drop", "add", "version", "deep"]))
    if action == "version" and isinstance(doc, dict) and "schema_version" in doc:
        doc["schema_version"] = draw(st.sampled_from([0, 2, 99, -1, "1", 1.0, True, None, 1.5, [1]]))
    elif action == "deep":
        parent[path[-1]] = f"__deep{draw(st.integers(50, 1500))}__"
    elif action in ("replace", "version") or isinstance(parent, list):
        parent[path[-1]] = draw(json_value)
    elif action == "drop":
        del parent[path[-1]]
    else:
        parent[draw(st.text(min_size=1, max_size=8))] = draw(json_value)
    return doc


@st.composite
def byte_mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` cut short, with a slice replaced by random bytes, or buried in deep nesting."""
    action = draw(st.sampled_from(["truncate", "splice", "splice", "nest", "empty"]))
    if action == "empty":
        return b""
    if action == "nest":
        n = draw(st.integers(100, 1500))
        return draw(st.sampled_from([b"[", b'{"a":', b"- ", b"{a: "])) * n + data
    i = draw(st.integers(0, len(data)))
    if action == "truncate":
        return data[:i]
    j = draw(st.integers(i, min(len(data), i + 16)))
    return data[:i] + draw(st.binary(max_size=16)) + data[j:]


def file_damage(doc: Any, raw: bytes, dump: Callable[[Any], str]) -> st.SearchStrategy[bytes]:
    """Damaged bytes of a file that parses to `doc` (written as `raw`; `dump` re-encodes a tree)."""

    def encode(tree: Any) -> bytes:
        return _expand_deep(dump(tree)).encode("utf-8", "surrogatepass")

    return st.one_of(doc_mutations(doc).map(encode), byte_mutations(raw))


def read_or_clear_error(path: Path, read: Callable[[Path], T], *names: str) -> T | None:
    """`read(path)`, or None after one Ofa2EdgeError whose message names `path` (or one of
    `names`); any other exception fails the test. The file is unchanged either way."""
    before = path.read_bytes()
    try:
        out: T | None = read(path)
    except Ofa2EdgeError as exc:
        message = str(exc)
        assert any(name in message for name in (str(path), *names)), f"the error does not name the file: {message}"
        out = None
    assert path.read_bytes() == before, "a reader changed the file"
    return out
