"""A guest agent's reply as it arrives, checked before anyone looks at it (both backends).

The guest is not trusted, so a reply is bounded in size (``MAX_REPLY``), in nesting (the
interpreter's recursion limit; the shapes callers accept are at most four levels deep) and in
its numbers (no ``NaN``, no ``1e999``), and must be a JSON object. Whether it has the shape
the command answers with is checked by the caller (``clan_vm_tasks.vm.agent``). Text from the
guest that goes into a message passes ``printable`` first: one line, no terminal controls.
"""

from __future__ import annotations

import json
import math
from typing import Any

from clan_vm_tasks.errors import AgentError, AgentInvalidReply

# guest-exec-status carries two streams of at most 16 MiB each, base64-encoded (4/3 larger).
MAX_REPLY = 48 << 20
MAX_TEXT = 200  # characters of guest text in one of our messages


def _constant(word: str) -> Any:
    raise AgentInvalidReply(f"the number {word} (not allowed in JSON)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise AgentInvalidReply(f"the number {printable(text, 40)} is out of range")
    return value


def parse(raw: bytes | str) -> dict[str, Any]:
    """The JSON object RAW holds; AgentInvalidReply for anything else."""
    if len(raw) > MAX_REPLY:
        raise AgentInvalidReply(f"a reply larger than {MAX_REPLY >> 20} MiB")
    try:
        message = json.loads(raw, parse_constant=_constant, parse_float=_finite)
    except RecursionError:
        raise AgentInvalidReply("JSON nested too deeply") from None
    except ValueError as error:  # also bad UTF-8, and integers of more than 4300 digits
        raise AgentInvalidReply(f"not JSON ({printable(str(error), 80)})") from None
    if not isinstance(message, dict):
        raise AgentInvalidReply(f"a JSON {type(message).__name__}, not an object")
    return message


def result(command: str, message: dict[str, Any]) -> Any:
    """The ``return`` value of a parsed reply to COMMAND; AgentError for an error reply."""
    if "error" in message:
        error = message["error"]
        desc = error.get("desc") if isinstance(error, dict) else error
        raise AgentError(f"the guest agent refused {command}: {printable(str(desc))}")
    if "return" not in message:
        raise AgentInvalidReply(f"an answer to {command} without 'return'")
    return message["return"]


def printable(text: str, limit: int = MAX_TEXT) -> str:
    """TEXT from the guest as one line of at most LIMIT characters, control characters
    (terminal escapes, newlines) shown escaped rather than acted on."""
    cut = text[: limit + 1]
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut[:limit])
    return shown + ("..." if len(cut) > limit else "")
