"""The tool as pip installs it, with its modules' bytecode written (pip compiles what it
installs). Without it, a checkout run with PYTHONDONTWRITEBYTECODE (or by a user who cannot
write to it) compiles every module changed since its bytecode was last written, in every
command: 10 to 15 ms of a ``status`` after a few edits, which no installed tool pays."""

from __future__ import annotations

import compileall
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "clan_vm_tasks"


def compile_package() -> None:
    if not compileall.compile_dir(str(PACKAGE), quiet=1):
        raise SystemExit(f"cannot write the bytecode of {PACKAGE}")
