"""The README's screenshots of the dashboard, taken with the tests' headless Chromium:

    .venv/bin/python -m tests.web.screenshots docs/

boots the example guest as three VMs in a scratch state directory (one running, one paused,
one stopped), serves the dashboard and saves ``dashboard.png`` and ``dashboard-console.png``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from selenium.webdriver import ActionChains
from selenium.webdriver.common.by import By

from tests.conftest import CLI, READY, ROOT, Guest, kill_leftover_qemu
from tests.web import browser
from tests.web.browser import wait
from tests.web.served import serve


def main(out: Path) -> None:
    guest = Guest(ROOT / ".cache/guest/vmlinuz", ROOT / ".cache/guest/initrd")
    home = Path(tempfile.mkdtemp(prefix="clan-vm-shots-"))
    cli = CLI(home / "state")
    try:
        cli.create_guest("web", guest, "--forward", "tcp:auto:22", "--forward", "tcp:auto:80")
        cli.create_guest("db", guest, "--forward", "tcp:auto:5432")
        cli.create_guest("ci-runner", guest)
        for name in ("web", "db"):
            cli.ok("start", name, "--wait-for", READY, "--timeout", "120")
        cli.ok("pause", "db")
        cli.ok("snapshot", "ci-runner", "fresh")
        served = serve(cli, cwd=home)
        with browser.chromium(1400, 860) as driver:
            driver.get(served.url)
            wait(lambda: driver.find_element(By.CSS_SELECTOR, "body[data-drawn]"), 30)
            browser.click_action(driver, "ci-runner", "start")
            wait(lambda: browser.state_of(driver, "ci-runner") == "running", 120)
            wait(lambda: browser.note_of(driver, "ci-runner").startswith("started"), 120)
            driver.save_screenshot(str(out / "dashboard.png"))
            browser.row(driver, "web").find_element(By.CSS_SELECTOR, ".name-link").click()
            wait(lambda: "this machine" in driver.find_element(By.ID, "definition").text, 30)
            driver.find_element(By.ID, "console-attach").click()
            wait(lambda: "attached" in driver.find_element(By.ID, "console-note").text, 30)
            driver.find_element(By.CSS_SELECTOR, "#terminal .xterm").click()
            ActionChains(driver).send_keys("\n").perform()
            ActionChains(driver).send_keys("uname -sr; free -m | head -2\n").perform()
            wait(lambda: "Mem:" in browser.terminal_text(driver), 30)
            driver.execute_script("document.getElementById('detail').scrollIntoView()")
            driver.save_screenshot(str(out / "dashboard-console.png"))
        served.stop()
        for name in ("web", "db", "ci-runner"):
            cli.run("stop", name, "--force")
    finally:
        kill_leftover_qemu(cli.state_dir)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs"))
