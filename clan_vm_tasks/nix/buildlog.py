"""Following a ``nix build --log-format internal-json`` as it runs: how many derivations are
built of how many, which one now, its latest log line; and, when it fails, Nix's messages
as the text an error is made from.

Nix (2.8 and current) writes one ``@nix {JSON}`` line per event on stderr: ``start`` and
``stop`` of activities (type 105: building one derivation, 104: the whole build, 108:
fetching a path from a cache), ``result`` of an activity (type 105: progress ``[done,
expected, running, failed]``, 101: a log line of a build) and ``msg`` (errors, warnings).
A builder that fails is named in a ``msg`` ("builder for 'DRV' failed with exit code N");
the last lines it printed are kept for the error, since Nix's own message (and, when
another derivation needed it, its last message) does not carry them.
"""

from __future__ import annotations

import collections
import json
import re
from typing import Any

from clan_vm_tasks.render import Progress

ACT_BUILDS, ACT_BUILD, ACT_SUBSTITUTE = 104, 105, 108
RES_BUILD_LOG_LINE, RES_PROGRESS = 101, 105
_STORE_NAME = re.compile(r"/nix/store/[0-9a-z]{32}-([^/'\s]+?)(\.drv)?(?=['\s]|$)")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_FAILED_BUILDER = re.compile(r"builder for '(/\S+?\.drv)' failed[^\n]*")
TAIL_LINES = 10  # of a failed builder's log, in the error (as Nix's log-lines default)
MAX_LINE = 300


def printable(text: str) -> str:
    """A line a builder (someone else's code) printed, safe to show on a terminal."""
    line = _CONTROL.sub("", _ANSI.sub("", text)).replace("\t", "  ")
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."


def _name(text: str) -> str:
    found = _STORE_NAME.search(text)
    return found.group(1) if found else text


class BuildLog:
    def __init__(self, progress: Progress, label: str) -> None:
        self.progress = progress
        self.label = label  # what is built, for the user ("web")
        self.messages: list[str] = []  # what Nix said, as plain stderr text would have it
        self.current: dict[int, str] = {}  # activity id -> derivation or path name
        self.done = 0
        self.expected = 0
        self.announced = False
        self.derivations: dict[int, str] = {}  # activity id -> the derivation it builds
        self.tails: dict[str, collections.deque[str]] = {}  # derivation -> its last lines

    def feed(self, line: str) -> None:
        if not line.startswith("@nix "):
            if line.strip():
                self.messages.append(line)
            return
        try:
            event = json.loads(line[5:])
        except ValueError:
            return
        if isinstance(event, dict):
            self._event(event)

    def _event(self, event: dict[str, Any]) -> None:
        action = event.get("action")
        if action == "msg":
            if event.get("level", 9) <= 1:  # errors and warnings
                self.messages.append(str(event.get("msg", "")))
        elif action == "start" and event.get("type") in (ACT_BUILD, ACT_SUBSTITUTE):
            fields = event.get("fields") or [event.get("text", "")]
            name = _name(str(fields[0]))
            self.current[int(event.get("id", 0))] = name
            if event.get("type") == ACT_BUILD:
                self.derivations[int(event.get("id", 0))] = str(fields[0])
            self._announce(name)
        elif action == "stop":
            self.current.pop(int(event.get("id", 0)), None)
            self._show()
        elif action == "result":
            fields = event.get("fields") or []
            if event.get("type") == RES_PROGRESS and len(fields) >= 2:
                self.done, self.expected = int(fields[0]), int(fields[1])
                self._show()
            elif event.get("type") == RES_BUILD_LOG_LINE and fields:
                drv = self.derivations.get(int(event.get("id", 0)))
                if drv is not None:
                    tail = self.tails.setdefault(drv, collections.deque(maxlen=TAIL_LINES))
                    tail.append(printable(str(fields[0])))
                self._show(str(fields[0]))

    def _announce(self, name: str) -> None:
        """The first real build or download: a line for logs (a no-op build prints nothing)."""
        if not self.announced:
            self.announced = True
            self.progress.step(f"building {self.label}: {name} ... (nix build)")
        self._show()

    def _show(self, log_line: str = "") -> None:
        if not self.current:
            return
        count = f"{self.done} of {self.expected} built, " if self.expected else ""
        now = ", ".join(sorted(set(self.current.values())))
        self.progress.detail(f"{count}now {now}" + (f": {log_line}" if log_line else ""))

    def stderr(self) -> str:
        """What Nix said, for the error message of a failed build."""
        return "\n".join(self.messages)

    def failed_builders(self) -> str | None:
        """Each builder that failed, with the last lines it printed and how to see all of
        them; None when no builder failed (Nix failed otherwise)."""
        reports = []
        for message in self.messages:
            found = _FAILED_BUILDER.search(_ANSI.sub("", message))
            if found is None:
                continue
            drv, tail = found.group(1), list(self.tails.get(found.group(1), ()))
            lines = [printable(found.group(0))]
            if tail:
                lines[0] += f"; the last {len(tail)} lines of its log:"
                lines += [f"  | {line}" for line in tail]
            lines.append(f"  the whole log: nix log {drv}")
            reports.append("\n".join(lines))
        return "\n".join(reports) if reports else None
