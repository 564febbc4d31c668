"""The page (``static/``) and its terminal widget, xterm.js, which is not ours: setup
fetches ``@xterm/xterm`` and ``@xterm/addon-fit`` from the npm registry (pinned by version
and integrity hash) into ``static/vendor/``, which a wheel built afterwards carries with
their licences. ``$CLAN_VM_XTERM_DIR`` names another copy (a distribution's)."""

from __future__ import annotations

import os
from pathlib import Path

from clan_vm_tasks.errors import ClanVMError

STATIC = Path(__file__).resolve().parent / "static"
VENDOR_FILES = (
    "xterm/xterm.mjs",
    "xterm/xterm.css",
    "xterm/LICENSE",
    "addon-fit/addon-fit.mjs",
    "addon-fit/LICENSE",
)


def vendor_dir() -> Path:
    return Path(os.environ.get("CLAN_VM_XTERM_DIR") or STATIC / "vendor")


def check_vendor() -> Path:
    """The directory holding xterm.js, or an error that says how to get it."""
    directory = vendor_dir()
    missing = [f for f in VENDOR_FILES if not (directory / f).is_file()]
    if missing:
        raise ClanVMError(
            f"the dashboard's terminal widget (xterm.js) is missing: no {directory / missing[0]}; "
            "in a checkout, ./scripts/setup fetches it (@xterm/xterm and @xterm/addon-fit "
            "from the npm registry, with npm); a wheel built after that carries it"
        )
    return directory


def page() -> bytes:
    return (STATIC / "index.html").read_bytes()
