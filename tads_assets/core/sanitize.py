"""Text from hostile inputs made safe to store, log and print: one line, no control characters (a terminal would
run escape sequences such as ESC[2J), no lone surrogates (Parquet and terminals refuse them), bounded length."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def one_line(text: object, limit: int | None = 300) -> str:
    """`text` on one line with every control character written as its escape (`\\x1b`, `\\n`), undecodable
    characters as `\\udcff`-style escapes, and at most `limit` characters (None: no limit)."""
    s = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    s = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), s)
    return s if limit is None or len(s) <= limit else s[: limit - 1] + "…"
