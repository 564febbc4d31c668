"""The web dashboard, measured in headless Chromium against a baseline of the same run.

    .venv/bin/python bench/web.py [--rounds N]

With 200 VMs registered (as bench/run.py makes them):
(d) first load: from navigation start to the VM table drawn (the page's own
    ``performance.mark("vms-drawn")``): the very first (a new browser profile: the URL
    with the token, its redirect, every file fetched), then a fresh page each round, against
    ``clan-vm-manager list --json`` of the same 200 VMs (the command line's answer).
(e) live delay: from a change made outside the page (a VM created or deleted with the
    Python API at a random moment, a VM started or stopped with the command line)
    returning, to the page showing it (a MutationObserver in the page notes when its row
    appears, changes or goes), against the server's poll interval; and the cost of one poll.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clan_vm_tasks import lifecycle  # noqa: E402
from clan_vm_tasks.web import events, views  # noqa: E402
from clan_vm_tasks.web.context import Context  # noqa: E402
from examples import guest as example_guest  # noqa: E402
from tests.conftest import CLI  # noqa: E402
from tests.web import browser  # noqa: E402
from tests.web.served import serve  # noqa: E402

BIN = Path(sys.executable).parent
MARK = "const m = performance.getEntriesByName('vms-drawn'); return m[0] ? m[0].startTime : null"
WATCH = """
window.seen = {};
const note = () => {
  const now = performance.timeOrigin + performance.now();
  const here = new Set();
  for (const tr of document.querySelectorAll('#vms tbody tr')) {
    here.add(tr.dataset.vm);
    const key = tr.dataset.vm + ':' + tr.dataset.state;
    if (!(key in window.seen)) window.seen[key] = now;
  }
  for (const key of Object.keys(window.seen)) {
    const name = key.split(':')[0];
    if (!here.has(name) && !((name + ':gone') in window.seen)) window.seen[name + ':gone'] = now;
  }
};
new MutationObserver(note).observe(document.querySelector('#vms tbody'),
  {childList: true, subtree: true, attributes: true});
"""


def seen(driver: browser.webdriver.Chrome, key: str, timeout: float = 120) -> float:
    """When (epoch seconds) the page showed KEY ("name:state" or "name:gone")."""
    found = browser.wait(lambda: driver.execute_script(f"return window.seen[{key!r}]"), timeout)
    return float(found) / 1000


def timed(argv: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    home = Path(tempfile.mkdtemp(prefix="clan-vm-bench-web-"))
    cli = CLI(home / "state")
    env = cli.env
    settings = lifecycle.Settings(state_dir=cli.state_dir)
    store = lifecycle.open_store(settings)
    for i in range(200):
        lifecycle.create(store, lifecycle.VMConfig(name=f"vm{i:03}", disk_size=16))
    guest = ROOT / ".cache" / "guest"
    cli.create_guest("booted", browser_guest(guest))
    poll = [0.0] * 5
    ctx = Context(settings, None, None)
    for i in range(len(poll)):
        began = time.perf_counter()
        views.rows(ctx, ctx.quick_store())
        poll[i] = time.perf_counter() - began
    print(f"one poll of the VM list (list_vms of 201 VMs): {statistics.median(poll) * 1000:.1f}ms")

    served = serve(cli, cwd=home)
    try:
        with browser.chromium() as driver:
            driver.get(served.url)  # logs in: the cookie is kept for the rounds
            cold = float(browser.wait(lambda: driver.execute_script(MARK))) / 1000
            loads, lists = [], []
            for _ in range(rounds):
                lists.append(timed([str(BIN / "clan-vm-manager"), "list", "--json"], env))
                driver.get(served.base + "/")
                drawn = browser.wait(lambda: driver.execute_script(MARK))
                assert driver.execute_script("return document.body.dataset.drawn") == "201"
                loads.append(float(drawn) / 1000)
            load, base = statistics.median(loads), statistics.median(lists)
            print(
                f"(d) first load, 201 VMs, to the table drawn: new profile {cold * 1000:.0f}ms; "
                f"a fresh page {load * 1000:.0f}ms "
                f"(min {min(loads) * 1000:.0f}, max {max(loads) * 1000:.0f}); "
                f"list --json {base * 1000:.0f}ms; ratio {load / base:.2f} (median of {rounds})"
            )

            driver.execute_script(WATCH)
            created, deleted = [], []
            for i in range(rounds * 2):
                name = f"new{i:02}"
                time.sleep(random.uniform(0, events.INTERVAL))  # not in step with the poller
                lifecycle.create(store, lifecycle.VMConfig(name=name, disk_size=16))
                done = time.time()
                created.append(seen(driver, f"{name}:stopped") - done)
                time.sleep(random.uniform(0, events.INTERVAL))
                lifecycle.delete(store, name, force=True)
                done = time.time()
                deleted.append(seen(driver, f"{name}:gone") - done)
            booted = []
            for _ in range(max(1, rounds // 2)):
                driver.execute_script("window.seen = {}")
                cli.ok("start", "booted")
                done = time.time()
                booted.append(seen(driver, "booted:running") - done)
                cli.ok("stop", "booted", "--force")
                done = time.time()
                booted.append(seen(driver, "booted:stopped") - done)
            delays = created + deleted
            print(
                f"(e) live delay, change made -> page shows it: create/delete "
                f"median {statistics.median(delays) * 1000:.0f}ms, max {max(delays) * 1000:.0f}ms "
                f"({len(delays)} changes); start/stop with the command line "
                f"median {statistics.median(booted) * 1000:.0f}ms, "
                f"max {max(booted) * 1000:.0f}ms ({len(booted)}); "
                f"poll interval {events.INTERVAL * 1000:.0f}ms"
            )
    finally:
        served.stop()
        subprocess.run([str(BIN / "clan-vm-manager"), "stop", "booted", "--force"], env=env,
                       capture_output=True, check=False)  # fmt: skip


def browser_guest(directory: Path) -> object:
    from tests.conftest import Guest

    if not example_guest.built(directory):
        example_guest.build(directory)
    return Guest(directory / "vmlinuz", directory / "initrd")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main()
