"""The JupyterLab extension in a real Chromium, on a real JupyterLab server and kernel.

What a newcomer sees without typing a command: the kernel's logo in the
Launcher, the status item going from "not saved" to "saved", saving 1 GiB, a
failing state with its one sentence when the checkpoint disk turns read-only
(a tmpfs remounted for real: root only, as CI runs), an older generation
restored from the "Kernel state" panel, and the restart dialog saying the
state comes back. Each state is screenshotted into test-artifacts/.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .lab import STEP, LabServer, chromium
from .test_clients import ARTIFACTS, LAB_SETTINGS, LabNotebook, wait_for_writers
from .test_kernel_safety import tmpfs

needs_root = pytest.mark.skipif(os.getuid() != 0, reason="mounting a tmpfs needs root")

#: The kernel's configuration for these tests: no automatic checkpoint, so that the
#: unsaved state stays on screen until the panel's "Save now" is clicked.
KERNEL_CONFIG = (
    "c.PersistentKernel.checkpoint_interval = 3600\nc.PersistentKernel.standby = False\n"
)


def status_item(page: Any) -> Any:
    return page.locator(".pk-StateItem")


def panel_message(page: Any) -> Any:
    return page.locator("#persistent-kernel-state .pk-message")


def click_panel_button(page: Any, label: str, row: str | None = None) -> None:
    scope = page.locator("#persistent-kernel-state")
    if row is not None:
        scope = scope.locator(row)
    scope.locator("button.pk-button", has_text=re.compile(f"^{re.escape(label)}$")).click()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"lab-panel-{name}.png"))


def configure(env: dict[str, Path]) -> None:
    for plugin, values in LAB_SETTINGS.items():
        path = env["JUPYTER_CONFIG_DIR"] / "lab" / "user-settings" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    profile = env["IPYTHONDIR"] / "profile_default"
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "ipython_kernel_config.py").write_text(KERNEL_CONFIG)


def session(page: Any, disk: Path) -> None:
    from playwright.sync_api import expect

    # The Launcher's card shows the kernel's logo, not a letter.
    card = page.locator('.jp-LauncherCard[data-category="Notebook"][title="Python (persistent)"]')
    logo = card.locator("img")
    expect(logo).to_have_attribute("src", re.compile(r"kernelspecs/python-persistent/logo"))
    loaded = "(img) => img.complete && img.naturalWidth > 0"
    page.wait_for_function(loaded, arg=logo.element_handle())
    card.screenshot(path=str(ARTIFACTS / "lab-panel-launcher-logo.png"))
    card.click()
    notebook = LabNotebook(page)
    notebook.wait_idle()

    item = status_item(page)
    expect(item).to_have_text("Kernel state: not saved yet", timeout=STEP)
    shot(page, "1-not-saved")
    notebook.run("x = 1")
    expect(item).to_have_text("Kernel state: 1 cell not saved yet", timeout=STEP)

    # The panel opens from the status item; Save now writes generation 1.
    item.click()
    panel = page.locator("#persistent-kernel-state")
    expect(panel).to_be_visible()
    click_panel_button(page, "Save now")
    expect(panel_message(page)).to_contain_text("Checkpoint 1 written", timeout=STEP)
    expect(item).to_have_text(re.compile(r"^Kernel state: saved \d+ s ago · \d"), timeout=STEP)
    expect(panel.locator('li[data-generation="1"]')).to_be_visible()
    shot(page, "2-saved")

    # 1 GiB: the item says it is saving while the writer works, then its size.
    notebook.run("import numpy as np; big = np.random.default_rng(0).random(2**27); x = 2")
    page.evaluate(WATCH_ITEM)
    click_panel_button(page, "Save now")
    expect(panel_message(page)).to_contain_text("Checkpoint 2 written", timeout=STEP)
    seen = page.evaluate("() => window.__pkItem")
    assert any(text.startswith("Kernel state: saving...") for text in seen), seen
    expect(item).to_have_text(re.compile(r"saved \d+ s ago · 1\.0 GiB$"), timeout=STEP)
    shot(page, "3-saved-1GiB")

    # An older generation, from the panel: its variables replace the live ones.
    click_panel_button(page, "Restore", row='li[data-generation="1"]')
    notebook.accept_dialog("Restore")
    expect(panel_message(page)).to_contain_text(
        "Restored 1 variable(s) from generation 1", timeout=STEP
    )
    out = notebook.run("print(x, big.shape)", shows="(134217728,)")
    assert out.strip() == "1 (134217728,)", out
    shot(page, "4-restored-generation-1")

    # The checkpoint disk turns read-only: the item warns, with the one sentence.
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    try:
        notebook.run("y = 3")
        click_panel_button(page, "Save now")
        expect(panel_message(page)).to_contain_text("The checkpoint failed", timeout=STEP)
        expect(item).to_have_class(re.compile("pk-mod-warning"), timeout=STEP)
        expect(item).to_contain_text("read-only disk, so no checkpoint could be written")
        shot(page, "5-failing-read-only")
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
    click_panel_button(page, "Save now")
    expect(item).not_to_have_class(re.compile("pk-mod-warning"), timeout=STEP)

    # The restart dialog says the state comes back, not that it is lost.
    notebook.menu("Kernel", "Restart Kernel…")
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("Your variables come back")
    expect(dialog).not_to_contain_text("All variables will be lost")
    dialog.screenshot(path=str(ARTIFACTS / "lab-panel-6-restart-dialog.png"))
    notebook.accept_dialog("Restart")
    expect(item).to_have_text(re.compile(r"^Kernel state: saved"), timeout=STEP)
    out = notebook.run("print(x, y, big.shape)", shows="(134217728,)")
    assert "1 3 (134217728,)" in out, out
    shot(page, "7-after-restart")


# Records every text the status item shows (a save of 1 GiB lasts seconds: the
# test reads what it showed meanwhile, not only what it shows at the end).
WATCH_ITEM = """() => {
  window.__pkItem = [];
  const item = document.querySelector('.pk-StateItem');
  new MutationObserver(() => window.__pkItem.push(item.textContent)).observe(
    item, {subtree: true, childList: true, characterData: true});
}"""


@needs_root
@pytest.mark.timeout(600)
def test_the_kernel_state_in_jupyterlab(jupyter_env: dict[str, Path], tmp_path: Path) -> None:
    configure(jupyter_env)
    ARTIFACTS.mkdir(exist_ok=True)
    checkpoints = jupyter_env["checkpoints"]
    with tmpfs(checkpoints, "3g") as disk:
        server = LabServer(jupyter_env["work"], tmp_path / "lab.log").start()
        try:
            with chromium(tmp_path / "chromium-profile") as context:
                page = context.pages[0] if context.pages else context.new_page()
                page.goto(server.url)
                try:
                    session(page, disk)
                except BaseException:
                    shot(page, "failure")
                    print(f"jupyter lab's log:\n{server.log()}")
                    raise
        finally:
            server.stop()
            wait_for_writers(checkpoints)
