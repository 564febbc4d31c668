"""The dashboard in a real browser (headless Chromium) on a real VM: open it with the token,
see the VMs, start one and watch it turn running without a reload, type into its console
and read the guest's answer, stop it, delete another after a confirmation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver import ActionChains
from selenium.webdriver.common.by import By

from examples.guest import READY_LINE
from tests.conftest import CLI, Guest, kill_leftover_qemu
from tests.web import browser
from tests.web.browser import click_action, note_of, state_of, terminal_text, wait
from tests.web.served import Served, serve

pytestmark = [
    pytest.mark.vm,
    pytest.mark.xdist_group("web-browser"),
    pytest.mark.skipif(browser.available() is not None, reason=str(browser.available())),
]


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory, guest: Guest) -> Iterator[tuple[CLI, Served]]:
    home = tmp_path_factory.mktemp("web-browser")
    cli = CLI(home / "state")
    cli.create_guest("web", guest, "--forward", "tcp:auto:22")
    cli.create_guest("spare", guest)
    served = serve(cli, cwd=home)
    yield cli, served
    served.stop()
    kill_leftover_qemu(cli.state_dir)


def test_start_console_stop_and_delete_in_the_browser(web: tuple[CLI, Served]) -> None:
    cli, served = web
    with browser.chromium() as driver:
        driver.get(served.url)
        assert "token=" not in driver.current_url  # it went into a cookie
        wait(lambda: driver.find_element(By.CSS_SELECTOR, "body[data-drawn]"), 30, "table")
        rows = driver.find_elements(By.CSS_SELECTOR, "#vms tbody tr")
        assert [r.get_attribute("data-vm") for r in rows] == ["spare", "web"]
        assert state_of(driver, "web") == "stopped"
        driver.execute_script("window.notReloaded = true")

        click_action(driver, "web", "start")
        wait(lambda: state_of(driver, "web") == "running", 120, "web running")
        wait(lambda: note_of(driver, "web").startswith("started VM 'web' (pid"), 120, "note")
        assert driver.execute_script("return window.notReloaded") is True
        status = json.loads(cli.ok("status", "web", "--json").out)
        assert status["state"] == "running"
        forward = status["forwards"][0]
        assert forward in browser.row(driver, "web").text

        browser.row(driver, "web").find_element(By.CSS_SELECTOR, ".name-link").click()
        wait(lambda: driver.find_element(By.ID, "detail").is_displayed(), 10, "detail")
        wait(lambda: "this machine" in driver.find_element(By.ID, "definition").text, 30, "show")
        assert "disk.qcow2" in driver.find_element(By.ID, "disks").text
        wait(lambda: "start" in driver.find_element(By.ID, "history").text, 30, "history")

        driver.find_element(By.ID, "console-attach").click()
        wait(lambda: "attached" in driver.find_element(By.ID, "console-note").text, 30, "attach")
        # Typed before the guest's shell reads the serial line, the input would be lost.
        wait(lambda: READY_LINE in terminal_text(driver), 120, "the guest's ready line")
        driver.find_element(By.CSS_SELECTOR, "#terminal .xterm").click()
        ActionChains(driver).send_keys("echo from-the-browser-$((6*7))\n").perform()
        wait(lambda: "from-the-browser-42" in terminal_text(driver), 60, "the guest's answer")
        # One client at a time: the command line is told the console is in use.
        refused = cli.run("console", "web", stdin="echo nope\n")
        assert refused.code == 1 and "already attached elsewhere" in refused.err
        driver.find_element(By.ID, "console-detach").click()

        click_action(driver, "web", "stop")
        wait(lambda: state_of(driver, "web") == "stopped", 120, "web stopped")
        wait(lambda: "(acpi)" in note_of(driver, "web"), 60, "the stop step")
        assert note_of(driver, "web").startswith("stopped VM 'web' after")
        assert "last stop: acpi" in browser.row(driver, "web").text

        click_action(driver, "spare", "delete")
        dialog = driver.find_element(By.ID, "confirm")
        wait(lambda: dialog.is_displayed(), 10, "confirmation")
        assert "Delete VM 'spare'?" in dialog.text
        dialog.find_element(By.CSS_SELECTOR, 'button[value="cancel"]').click()
        assert (cli.state_dir / "vms" / "spare").is_dir()
        click_action(driver, "spare", "delete")
        wait(lambda: dialog.is_displayed(), 10, "confirmation")
        dialog.find_element(By.ID, "confirm-ok").click()
        gone = '#vms tr[data-vm="spare"]'
        wait(lambda: not driver.find_elements(By.CSS_SELECTOR, gone), 60, "spare gone")
        assert json.loads(cli.ok("list", "--json").out)[0]["name"] == "web"
        assert any(Path(cli.state_dir / "kept-disks").iterdir())
        assert driver.execute_script("return window.notReloaded") is True
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
