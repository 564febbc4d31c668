"""Following a ``nix build --log-format internal-json`` as it runs: how many derivations are
built of how many, which one now, its latest log line; and, when it fails, Nix's messages
as the text an error is made from.

Nix (2.8 and current) writes one ``@nix {JSON}`` line per event on stderr: ``start`` and
``stop`` of activities (type 105: building one derivation, 104: the whole build, 108:
fetching a path from a cache), ``result`` of an activity (type 105: progress ``[done,
expected, running, failed]``, 101: a log line of a build) and ``msg`` (errors, warnings).
"""

from __future__ import annotations

import json
import re
from typing import Any

from clan_vm_tasks.render import Progress

ACT_BUILDS, ACT_BUILD, ACT_SUBSTITUTE = 104, 105, 108
RES_BUILD_LOG_LINE, RES_PROGRESS = 101, 105
_STORE_NAME = re.compile(r"/nix/store/[0-9a-z]{32}-([^/'\s]+?)(\.drv)?(?=['\s]|$)")


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
