"""The Nix store is read-only to this tool: nothing is ever written under it."""

from __future__ import annotations

import os
from pathlib import Path

STORE_DIR = os.environ.get("NIX_STORE_DIR", "/nix/store")


def in_store(path: Path) -> bool:
    """Whether PATH (resolved) is the Nix store or in it (a flake's copy there)."""
    resolved = str(path.resolve())
    return resolved == STORE_DIR or resolved.startswith(STORE_DIR + "/")
