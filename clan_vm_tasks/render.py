"""Human-readable output: aligned tables and key/value blocks."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

Notify = Callable[[str], None]  # how operations report progress and warnings


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def as_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def state_word(info: dict[str, Any]) -> str:
    word = str(info["state"])
    if info.get("pid"):
        word += f" (pid {info['pid']})"
    if info.get("qmp") is False:
        word += ", QMP not answering"
    return word


def key_values(pairs: Sequence[tuple[str, object]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k + ':':<{width + 1}} {'-' if v is None else v}" for k, v in pairs)


def notice(message: str) -> None:
    """The default Notify: one line on stderr, at once."""
    print(message, file=sys.stderr, flush=True)
