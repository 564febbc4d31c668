"""Completion for real: the script ``completion SHELL`` prints is loaded into bash, zsh and
fish running in a terminal (tmux), Tab is pressed, and what the line then says is read
off the screen. Also: what a Tab costs to answer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clan_vm_tasks.cli import completion
from tests.conftest import CLI, ROOT, Guest
from tests.nix_fixtures import NixCLI, make_flake, ncli, needs_nix

__all__ = ["ncli"]  # fixtures

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
BIN = Path(sys.executable).parent
SHELLS = {
    "bash": ["bash", "--norc", "--noprofile"],
    "zsh": ["zsh", "-f"],
    "fish": ["fish", "--no-config"],
}
LOAD = {
    "bash": "source {script}",
    "zsh": "autoload -U compinit && compinit -u && source {script}",
    "fish": "source {script}",
}


class Terminal:
    """A shell in a tmux window of its own (a private tmux server)."""

    def __init__(self, directory: Path, shell: str, env: dict[str, str], cwd: Path) -> None:
        self.socket = str(directory / "tmux.sock")
        exports = [f"{k}={v}" for k, v in env.items()]
        self.tmux("new-session", "-d", "-x", "200", "-y", "50", "-c", str(cwd),
                  *(f"-e{e}" for e in exports), *SHELLS[shell])  # fmt: skip

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-S", self.socket, *args], capture_output=True, text=True, check=True
        ).stdout

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-l", text)

    def press(self, key: str) -> None:
        self.tmux("send-keys", key)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-N")  # -N: with the spaces at line ends

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while text not in (screen := self.screen()):
            assert time.monotonic() < deadline, f"{text!r} never showed:\n{screen}"
            time.sleep(0.05)
        return screen

    def run(self, command: str, done: str) -> None:
        self.type(command)
        self.press("Enter")
        self.wait_for(done)

    def settled(self, quiet: float = 0.3, timeout: float = 30) -> str:
        """The screen once nothing has changed on it for QUIET seconds (the shell is done)."""
        deadline = time.monotonic() + timeout
        last, since = self.screen(), time.monotonic()
        while time.monotonic() - since < quiet:
            assert time.monotonic() < deadline, last
            time.sleep(0.05)
            now = self.screen()
            if now != last:
                last, since = now, time.monotonic()
        return last

    def completes(self, typed: str, expected: str) -> None:
        """On a clear screen, type TYPED, press Tab, and see the line become EXPECTED (a
        trailing space included: the word is complete)."""
        self.type(typed)
        self.wait_for(typed)
        self.press("Tab")
        self.wait_for(expected)
        self.settled()
        self.press("C-c")
        self.settled()
        self.run("clear", "")
        deadline = time.monotonic() + 30
        while "clan-vm-manager" in self.screen():
            assert time.monotonic() < deadline, self.screen()
            time.sleep(0.05)
        self.settled()

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for term in opened:
        term.close()


def open_shell(
    opened: list[Terminal], tmp_path: Path, shell: str, cli: CLI, cwd: Path | None = None
) -> Terminal:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed (./scripts/setup)")
    script = tmp_path / f"completion.{shell}"
    script.write_text(cli.ok("completion", shell).out)
    env = {k: v for k, v in cli.env.items() if k.startswith("CLAN_VM")}
    env["PATH"] = f"{BIN}:{os.environ['PATH']}"
    env["HOME"] = str(tmp_path)
    term = Terminal(tmp_path, shell, env, cwd or tmp_path)
    opened.append(term)
    term.run(LOAD[shell].format(script=script) + "; echo loaded", "\nloaded")
    return term


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_tab_completes_tasks_options_vms_snapshots_and_hosts(
    cli: CLI, tmp_path: Path, terminal: list[Terminal], shell: str
) -> None:
    settings = tmp_path / "config.yaml"
    settings.write_text(json.dumps({"hosts": {"hv-one": "qemu+ssh://root@hv1.example/system"}}))
    cli.env["CLAN_VM_CONFIG"] = str(settings)
    cli.ok("create", "webserver", "--disk", "16")
    cli.ok("create", "dbserver", "--disk", "16")
    cli.ok("snapshot", "webserver", "before-upgrade")
    term = open_shell(terminal, tmp_path, shell, cli)
    term.completes("clan-vm-manager stat", "clan-vm-manager status ")
    term.completes("clan-vm-manager status web", "clan-vm-manager status webserver ")
    term.completes("clan-vm-manager start webserver --fore", "--foreground ")
    term.completes("clan-vm-manager start webserver --wait-f", "--wait-for")  # or -agent
    term.completes("clan-vm-manager revert webserver be", "revert webserver before-upgrade ")
    term.completes("clan-vm-manager create x --host hv", "create x --host hv-one ")
    term.completes("clan-vm-manager list --filter run", "list --filter running ")
    term.completes("clan-vm-manager build db", "clan-vm-manager build dbserver ")
    term.completes("clan-vm-manager completion fi", "clan-vm-manager completion fish ")
    # A file where a file belongs: the shell's own completion takes over.
    (tmp_path / "vmlinuz-test").write_bytes(b"")
    term.completes("clan-vm-manager create x --kernel vmlinuz-t", "--kernel vmlinuz-test ")


@needs_nix
def test_inside_a_flake_the_vms_it_declares_complete_too(
    ncli: NixCLI, tmp_path: Path, terminal: list[Terminal], guest: Guest
) -> None:
    flake = make_flake(tmp_path / "flake", guest)
    ncli.ok("list", "--flake", str(flake))  # evaluated once: a Tab reads what that found
    calls = ncli.nix_calls()
    term = open_shell(terminal, tmp_path, "bash", ncli, cwd=flake)
    term.completes("clan-vm-manager start alp", "clan-vm-manager start alpha ")
    assert ncli.nix_calls() == calls  # a Tab never evaluates


def test_a_tab_loads_nothing_but_the_answer(cli: CLI, tmp_path: Path) -> None:
    """Answering a Tab for a VM name imports no task, no settings machinery, nothing heavy."""
    cli.ok("create", "web", "--disk", "16")
    probe = (
        "import sys\n"
        "from clan_vm_tasks.cli import main\n"
        "main(['clan-vm-manager', '__complete', 'bash', 'clan-vm-manager status w'])\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('clan_vm_tasks'))),"
        " file=sys.stderr)\n"
        "print(' '.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        env={**cli.env, "CLAN_VM_COMPLETE": completion.table(), "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == "web\n"
    ours, everything = done.stderr.splitlines()
    assert ours.split() == [
        "clan_vm_tasks",
        "clan_vm_tasks.cli",
        "clan_vm_tasks.cli.completion",
        "clan_vm_tasks.state",
        "clan_vm_tasks.state.location",
    ]
    assert not {"typing", "re", "json", "dataclasses", "pathlib"} & set(everything.split())


def test_the_answer_finds_the_package_from_anywhere_without_an_import_hook(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An editable install by pip's default puts an import hook on the path, which is not
    there without ``site``: the script names the package's directory instead."""
    hook = "__editable__.clan_vm_tasks-0.1.0.finder.__path_hook__"
    monkeypatch.setattr(
        sys, "path", [sys.path[0], hook, *(p for p in sys.path[1:] if p != str(ROOT))]
    )
    python, code = completion.answering()
    assert hook not in code
    answer = subprocess.run(
        [python, "-S", "-c", code, "__complete", "bash", "clan-vm-manager stat"],
        cwd=tmp_path, env={**cli.env, "PYTHONPATH": ""}, capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    assert answer.stdout.split() == ["status"], answer.stderr
