"""The web dashboard task: serve."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clan_vm_tasks.tasks.common import (
    CLAN_DIR_HELP,
    OVERRIDE_INPUT_HELP,
    open_store,
    overrides,
    say,
    vm_task,
)

if TYPE_CHECKING:
    from invoke.context import Context


@vm_task(
    optional=["flake"],
    examples=["serve", "serve --listen 127.0.0.1:0 --flake"],
    iterable=["override_input"],
    pairs=["override_input"],
    help={
        "override_input": OVERRIDE_INPUT_HELP,
        "listen": "address and port to serve on (default 127.0.0.1:8080; port 0: any free one)",
        "allow_remote": "allow an address other machines can reach (anyone who can reach it "
        "with the token controls the VMs)",
        "flake": "also show the VMs this flake declares (default: $CLAN_VM_FLAKE, else the "
        "flake around the cwd, if any)",
        "clan_dir": CLAN_DIR_HELP,
    },
)
def serve(
    c: Context,
    listen: str = "127.0.0.1:8080",
    allow_remote: bool = False,
    flake: str | bool | None = None,
    clan_dir: str | None = None,
    override_input: list[str] | None = None,
) -> None:
    """Serve a live web dashboard of every VM.

    Serve a web dashboard of every VM, live, with actions and consoles; prints the URL
    to open (with a fresh token). Ctrl-C stops it; the VMs keep running."""
    from clan_vm_tasks.clan import sync
    from clan_vm_tasks.nix import flakes
    from clan_vm_tasks.web import address, assets
    from clan_vm_tasks.web.context import Context as WebContext

    inputs = overrides(override_input)
    where = address.parse(listen)
    address.refuse_remote(where, allow_remote)
    assets.check_vendor()
    _, settings = open_store(create=False)
    chosen = flakes.chosen(flake, inputs) if flake else flakes.resolve(None, overrides=inputs)
    ctx = WebContext(settings, chosen, sync.clan_dir(clan_dir))

    from clan_vm_tasks.web.server import serve as run  # the web stack: only for this task

    run(ctx, where, allow_remote, say)
