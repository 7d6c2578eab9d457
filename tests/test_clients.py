"""The kernel in real Jupyter clients, with no part faked.

* JupyterLab in headless Chromium (Playwright), against a server this test
  starts: the seed session survives a restart from the Kernel menu and a
  close-and-reopen of the notebook.
* ``jupyter_kernel_test``: the messaging protocol, on a fresh kernel and on
  one that restored a checkpoint, with a checkpoint after every cell.
* nbclient, papermill, ``jupyter execute`` and VS Code: see test_batch.py;
  a real jupyter_server over REST and websocket: see test_server.py.
* ``jupyter console`` through a pseudo-terminal: ``%persist save``, quit,
  start again, the variable is back.
* Interrupts: a checkpoint never captures a cell halfway.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, ClassVar

import jupyter_kernel_test as jkt
import pexpect
import pytest
from jupyter_client.manager import start_new_kernel
from jupyter_kernel_test.msgspec_v5 import validate_message

from persistent_kernel.startup import survey
from persistent_kernel.store import Store

from .conftest import _ISOLATED
from .harness import KERNEL_NAME, KernelHarness
from .lab import STEP, LabServer, chromium

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
NOW = ["--PersistentKernel.checkpoint_interval=0"]
# nbclient's default deadline for IOPub output once a cell's reply is in (iopub_timeout)
IOPUB_AFTER_REPLY = 4.0
# The restore summary's first line, as printed or displayed (text/plain or HTML).
RESTORED = re.compile(r"^persistent-kernel: restored \d+ variables? from checkpoint \d+", re.M)


def shown(msg_or_output: dict[str, Any]) -> str:
    """The text a client shows for one IOPub message or notebook output."""
    content = msg_or_output.get("content", msg_or_output)
    if "text" in content:  # a stream
        return str(content["text"])
    return str(content.get("data", {}).get("text/plain", ""))


def restored_names(text: str) -> str:
    """The names the restore summary in *text* lists ("" if there is none)."""
    found = re.search(r"^persistent-kernel: restored .*\): (.*)$", text, re.M)
    return found.group(1).strip() if found else ""


# -- JupyterLab in Chromium ------------------------------------------------------------

LAB_SEED = [
    "import numpy as np",
    "import pandas as pd",
    "a = [100, 'aa']",
    """b = {"x": 100, "y": '200'}""",
    """df1 = pd.DataFrame({"i": np.arange(999), "s": [str(i) for i in range(999)]})""",
]
LAB_CHECK = "print(df1.shape, a)"
LAB_CHECK_OUT = "(999, 2) [100, 'aa']"

# JupyterLab user settings, in the isolated JUPYTER_CONFIG_DIR: no news toast
# over the notebook. The first save asks for a name, as it does by default.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}

# Records every kernel status the notebook toolbar shows, so a wait for "idle"
# after a restart cannot be satisfied by the idle of the kernel before it.
WATCH_STATUS = """() => {
  window.__pkStatuses = [];
  const item = document.querySelector(
    '.jp-NotebookPanel [data-jp-item-name="executionProgress"]');
  const note = () => {
    const el = item.querySelector('.jp-Notebook-ExecutionIndicator');
    window.__pkStatuses.push(el ? el.dataset.status : null);
  };
  new MutationObserver(note).observe(
    item, {subtree: true, childList: true, attributes: true, attributeFilter: ['data-status']});
}"""
RESTARTED = """() => {
  const el = document.querySelector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator');
  return window.__pkStatuses.some((s) => s !== 'idle') && el && el.dataset.status === 'idle';
}"""


class LabNotebook:
    """The one open notebook in a JupyterLab page, driven as a person would."""

    def __init__(self, page: Any) -> None:
        from playwright.sync_api import expect

        self.page = page
        self.expect = expect
        self.panel = page.locator(".jp-NotebookPanel")

    def wait_idle(self) -> None:
        self.expect(self.panel.locator(".jp-KernelName")).to_have_text("Python (persistent)")
        indicator = self.panel.locator(".jp-Notebook-ExecutionIndicator")
        self.expect(indicator).to_have_attribute("data-status", "idle", timeout=STEP)

    def run(self, code: str, shows: str | None = None) -> str:
        """Type *code* into the last (empty) cell, Shift+Enter, return its output.

        With *shows*, wait until the output contains it: outputs come on another
        channel than the reply that numbers the prompt, so may land after it.
        """
        cells = self.panel.locator(".jp-Notebook .jp-Cell")
        cell = cells.nth(cells.count() - 1)
        editor = cell.locator(".cm-content")
        self.expect(editor).to_have_text("")
        editor.click()
        self.page.keyboard.insert_text(code)
        self.expect(editor).to_have_text(code)
        self.page.keyboard.press("Shift+Enter")
        # "[ ]:" before, "[*]:" while it runs, "[N]:" once the reply came back
        prompt = cell.locator(".jp-InputPrompt")
        self.expect(prompt).to_have_text(re.compile(r"^\[\d+\]:$"), timeout=STEP)
        self.wait_idle()
        output = cell.locator(".jp-OutputArea")
        if shows is not None:
            self.expect(output).to_contain_text(shows, timeout=STEP)
        return str(output.inner_text())

    def menu(self, menu: str, item: str) -> None:
        self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{menu}$")).click()
        label = re.compile(f"^{re.escape(item)}$")
        self.page.locator(".lm-Menu .lm-Menu-itemLabel", has_text=label).click()

    def accept_dialog(self, button: str, text: str | None = None) -> None:
        """Click *button* in the open dialog, after typing *text* into its field."""
        dialog = self.page.locator(".jp-Dialog")
        if text is not None:
            field = dialog.locator('input:not([type="checkbox"])').first
            field.fill(text)
        label = re.compile(f"^{re.escape(button)}$")
        dialog.locator("button.jp-Dialog-button", has_text=label).click()
        self.expect(dialog).to_have_count(0)

    def wait_cells(self, path: Path) -> None:
        """Wait until every cell of the notebook saved at *path* is on the page
        (JupyterLab renders a long notebook's cells progressively)."""
        count = len(json.loads(path.read_text())["cells"])
        cells = self.panel.locator(".jp-Notebook .jp-Cell")
        self.expect(cells).to_have_count(count, timeout=STEP)

    def save(self) -> None:
        self.page.keyboard.press("Control+s")

    def saved(self) -> None:
        self.expect(self.page.locator(".lm-TabBar-tab.jp-mod-dirty")).to_have_count(0)

    def shut_down_kernel(self, server: LabServer) -> None:
        """Kernel > Shut Down Kernel (confirming, should JupyterLab ask)."""
        self.menu("Kernel", "Shut Down Kernel")
        dialog = self.page.locator(".jp-Dialog")
        deadline = time.monotonic() + 60
        while api(server, "/api/kernels"):
            if dialog.count():
                dialog.locator("button.jp-Dialog-button", has_text="Shut Down").click()
            if time.monotonic() > deadline:
                raise AssertionError("the kernel did not shut down")
            time.sleep(0.2)

    def restart_from_menu(self) -> None:
        self.page.evaluate(WATCH_STATUS)
        self.menu("Kernel", "Restart Kernel…")
        self.accept_dialog("Restart")
        self.page.wait_for_function(RESTARTED, timeout=STEP)
        self.wait_idle()


def check_restored(output: str, names: str) -> None:
    assert LAB_CHECK_OUT in output, output
    assert RESTORED.search(output), output
    assert restored_names(output) == names, output


def api(server: LabServer, path: str) -> Any:
    with urllib.request.urlopen(f"{server.base}{path}?token={server.token}", timeout=30) as r:
        return json.load(r)


def wait_for_writers(root: Path) -> None:
    """Let the detached writers of final checkpoints finish before the folder goes."""
    for session in Store(root).sessions():
        session.locks.wait_for_writers(120)


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def dismiss_listing_race(page: Any) -> None:
    """Dismiss JupyterLab's "Directory not found" error whenever it shows, as a person
    would. jupyter_server lists a folder by reading each entry after listing the
    names; a notebook renamed in between (the first save's rename) makes the whole
    listing fail with 404, which JupyterLab reports this way. The rename itself
    succeeds, and the steps below check what it did."""
    dialog = page.locator('.jp-Dialog[aria-label^="Directory not found"]')
    page.add_locator_handler(
        dialog, lambda found: found.locator("button.jp-Dialog-button").first.click()
    )


def lab_session(page: Any, server: LabServer, root: Path, checkpoints: Path) -> None:
    """What a person does in JupyterLab, checked at each step."""
    dismiss_listing_race(page)
    page.goto(server.url)
    launcher = '.jp-LauncherCard[data-category="Notebook"][title="Python (persistent)"]'
    page.locator(launcher).click()
    notebook = LabNotebook(page)
    notebook.wait_idle()
    for line in LAB_SEED:
        assert notebook.run(line).strip() == "", line

    notebook.restart_from_menu()
    check_restored(notebook.run(LAB_CHECK, shows=LAB_CHECK_OUT), "a, b, df1, np, pd")
    page.screenshot(path=str(ARTIFACTS / "jupyterlab-after-restart.png"))
    # With the default 30 s interval only the final checkpoint at shutdown saves this.
    assert notebook.run("c = 'added after the restart'").strip() == ""

    # The first save asks for a name: the notebook is renamed while its kernel runs.
    notebook.save()
    notebook.accept_dialog("Rename and Save", text="analysis.ipynb")
    notebook.saved()
    wait_for(lambda: (root / "analysis.ipynb").exists(), 30, "the save")
    assert not (root / "Untitled.ipynb").exists()
    assert notebook.run("d = 'after the first save'").strip() == ""
    # Kernel > Shut Down Kernel, close the tab, reopen the notebook from the file browser:
    # its state followed the rename (the server extension told the kernel).
    notebook.save()
    notebook.saved()
    notebook.shut_down_kernel(server)
    notebook.menu("File", "Close Tab")
    page.locator(".jp-DirListing-item", has_text="analysis.ipynb").dblclick()
    notebook = LabNotebook(page)
    notebook.wait_idle()
    notebook.wait_cells(root / "analysis.ipynb")
    output = notebook.run(LAB_CHECK, shows=LAB_CHECK_OUT)
    check_restored(output, "a, b, c, d, df1, np, pd")

    # File > Rename Notebook..., one more cell, save, close, reload, reopen.
    notebook.menu("File", "Rename Notebook…")
    notebook.accept_dialog("Rename", text="final.ipynb")
    wait_for(lambda: (root / "final.ipynb").exists(), 30, "the rename")
    assert notebook.run("e = 'after File > Rename'").strip() == ""
    notebook.save()
    notebook.saved()
    saved = root / "final.ipynb"
    wait_for(lambda: "after File > Rename" in saved.read_text(), 30, "the save")
    notebook.menu("File", "Close and Shut Down Notebook…")
    notebook.accept_dialog("Ok")
    wait_for(lambda: api(server, "/api/kernels") == [], 60, "the kernel to shut down")

    page.reload()
    page.locator(".jp-DirListing-item", has_text="final.ipynb").dblclick()
    notebook = LabNotebook(page)
    notebook.wait_idle()
    notebook.wait_cells(saved)
    output = notebook.run(LAB_CHECK, shows=LAB_CHECK_OUT)
    check_restored(output, "a, b, c, d, df1, e, np, pd")
    shows = "after File > Rename"
    assert notebook.run("print(e)", shows=shows).strip() == shows
    page.screenshot(path=str(ARTIFACTS / "jupyterlab-restored.png"))
    # File > Duplicate Notebook: the copy starts clean, the original keeps its state.
    notebook.menu("File", "Duplicate Notebook")
    wait_for(lambda: (root / "final-Copy1.ipynb").exists(), 30, "the duplicate")
    notebook.menu("File", "Close and Shut Down Notebook…")
    notebook.accept_dialog("Ok")
    wait_for(lambda: api(server, "/api/kernels") == [], 60, "the kernel to shut down")
    page.locator(".jp-DirListing-item", has_text="final-Copy1.ipynb").dblclick()
    notebook = LabNotebook(page)
    notebook.wait_idle()
    output = notebook.run("print('a' in dir(), 'e' in dir())", shows="False")
    assert output.strip().splitlines()[-1] == "False False", output
    assert "this notebook is a copy of final.ipynb, so it starts clean" in output, output
    assert "name\ttype" not in output, output  # one line, no empty table under it
    notebook.menu("File", "Close and Shut Down Notebook…")
    notebook.accept_dialog("Ok")
    wait_for(lambda: api(server, "/api/kernels") == [], 60, "the kernel to shut down")
    wait_for_writers(checkpoints)
    states = {c.key for c in survey(Store(checkpoints))}
    assert str(root / "final.ipynb") in states, states
    assert not {str(root / n) for n in ("Untitled.ipynb", "analysis.ipynb")} & states, states

    # A new notebook takes the name the first one left: it starts clean.
    page.locator(".lm-TabBar-tab", has_text="Launcher").click()  # still open, from the start
    page.locator(f"{launcher} >> visible=true").click()
    notebook = LabNotebook(page)
    notebook.wait_idle()
    shows = "False"
    output = notebook.run("print('a' in dir(), 'e' in dir())", shows=shows)
    assert output.strip() == "False False", output
    assert api(server, "/api/sessions")[0]["path"] == "Untitled.ipynb"


@pytest.mark.timeout(600)
def test_jupyterlab_in_chromium(jupyter_env: dict[str, Path], tmp_path: Path) -> None:
    for plugin, values in LAB_SETTINGS.items():
        settings = jupyter_env["JUPYTER_CONFIG_DIR"] / "lab" / "user-settings"
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    root = jupyter_env["work"]
    ARTIFACTS.mkdir(exist_ok=True)
    server = LabServer(root, tmp_path / "lab.log").start()
    try:
        with chromium(tmp_path / "chromium-profile") as context:
            page = context.pages[0] if context.pages else context.new_page()
            try:
                lab_session(page, server, root, jupyter_env["checkpoints"])
            except BaseException:
                page.screenshot(path=str(ARTIFACTS / "jupyterlab-failure.png"))
                print(f"jupyter lab's log:\n{server.log()}")  # shown with the failure
                raise
    finally:
        server.stop()
        wait_for_writers(jupyter_env["checkpoints"])
    # The summary is in the server's log too (the kernel logs it at warning level).
    log = server.log_path.read_text(errors="replace")
    assert "persistent-kernel: restored 5 variables" in log, server.log()
    assert "persistent-kernel: restored 7 variables" in log, server.log()
    assert "persistent-kernel: restored 8 variables" in log, server.log()


# -- jupyter_kernel_test ---------------------------------------------------------------


class PersistentKernelConformance(jkt.KernelTests):
    """jupyter_kernel_test's protocol checks, with the Python kernel's usual samples.

    The kernel checkpoints after every cell (interval 0), so forked writers run
    all through the suite: any stray message they sent would fail the checks,
    which validate every message on the shell and IOPub channels.
    """

    kernel_name = KERNEL_NAME
    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples: ClassVar[list[dict[str, Any]]] = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples: ClassVar[list[str]] = [
        "1",
        "print('hello, world')",
        "def f(x):\n  return x*2\n\n\n",
    ]
    incomplete_code_samples: ClassVar[list[str]] = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples: ClassVar[list[str]] = ["import = 7q"]
    code_page_something = "zip?"
    code_generate_error = "raise"
    code_execute_result: ClassVar[list[dict[str, str]]] = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
    ]
    code_display_data: ClassVar[list[dict[str, str]]] = [
        {
            "code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))",
            "mime": "text/html",
        },
        {
            "code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))",
            "mime": "text/latex",
        },
    ]
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "range", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"

    def test_history(self) -> None:
        """tail, range and search, as the suite's own test checks them, except
        that range asks for session 0: IPython (and stock ipykernel) numbers the
        running session 0 in range requests, while tail reports its real number."""
        codes = [sample["code"] for sample in self.code_execute_result]
        n = len(codes)
        reply = self.history_helper(codes, output=False, raw=True, hist_access_type="tail", n=n)
        assert [h[2] for h in reply["content"]["history"]] == codes
        start = reply["content"]["history"][0][1]
        reply = self.history_helper(
            codes, output=False, raw=True, hist_access_type="range", session=0,
            start=start, stop=start + 1,
        )  # fmt: skip
        assert [h[2] for h in reply["content"]["history"]] == codes[:1]
        reply = self.history_helper(
            codes, output=False, raw=True, hist_access_type="search",
            pattern=self.code_history_pattern, n=n,
        )  # fmt: skip
        assert reply["content"]["history"], "search found nothing"

    def execute_helper(
        self,
        code: str,
        timeout: int = jkt.TIMEOUT,
        silent: bool = False,
        store_history: bool = True,
        stop_on_error: bool = True,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The suite's execute check, every message validated as it does, except
        for one deadline: the suite allows 0.1 s between IOPub messages once the
        reply is in, and this kernel forks a standby or a writer after a cell that
        may change the namespace and before it reports idle (docs/design.md, "Kills,
        and a cell that is running"). The fork takes about 10 ms, and more than 0.1 s
        on a loaded 2-core machine, which failed a fresh-clone CI run. The deadline
        here is nbclient's own for output after the reply (its iopub_timeout, 4 s):
        a client that waits no longer must still see every message."""
        msg_id = self.kc.execute(
            code=code, silent=silent, store_history=store_history, stop_on_error=stop_on_error
        )
        reply = self.get_non_kernel_info_reply(timeout=timeout)
        assert reply is not None
        validate_message(reply, "execute_reply", msg_id)
        busy = self.kc.get_iopub_msg(timeout=1)
        validate_message(busy, "status", msg_id)
        assert busy["content"]["execution_state"] == "busy"
        outputs = []
        while True:
            msg = self.kc.get_iopub_msg(timeout=IOPUB_AFTER_REPLY)
            validate_message(msg, msg["msg_type"], msg_id)
            if msg["msg_type"] == "status":
                assert msg["content"]["execution_state"] == "idle"
                return reply, outputs
            if msg["msg_type"] == "execute_input":
                assert msg["content"]["code"] == code
            else:
                outputs.append(msg)

    base: ClassVar[Path]
    env_patch: ClassVar[pytest.MonkeyPatch]

    @classmethod
    def setUpClass(cls) -> None:
        # The jupyter_env fixture, by hand: unittest classes start their kernel
        # in setUpClass, before any function-scoped fixture.
        cls.base = Path(tempfile.mkdtemp(prefix="pk-conformance-"))
        cls.env_patch = pytest.MonkeyPatch()
        for var, name in _ISOLATED.items():
            (cls.base / name).mkdir()
            cls.env_patch.setenv(var, str(cls.base / name))
        for var in ("JPY_SESSION_NAME", "PERSISTENT_KERNEL_SESSION", "JUPYTER_PATH"):
            cls.env_patch.delenv(var, raising=False)
        (cls.base / "work").mkdir()
        try:
            cls.prepare()
            cls.km, cls.kc = start_new_kernel(
                kernel_name=cls.kernel_name,
                startup_timeout=120,
                cwd=str(cls.base / "work"),
                extra_arguments=NOW,
            )
        except BaseException:
            cls.cleanup()
            raise

    @classmethod
    def prepare(cls) -> None:
        """Anything to do before the kernel under test starts."""

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            super().tearDownClass()
        finally:
            cls.cleanup()

    @classmethod
    def cleanup(cls) -> None:
        wait_for_writers(cls.store_root())
        cls.env_patch.undo()
        shutil.rmtree(cls.base, ignore_errors=True)

    @classmethod
    def store_root(cls) -> Path:
        return cls.base / "data" / "persistent_kernel"

    def test_kernel_info_names_the_implementation(self) -> None:
        self.flush_channels()
        msg_id = self.kc.kernel_info()
        reply = self.kc.get_shell_msg(timeout=jkt.TIMEOUT)
        validate_message(reply, "kernel_info_reply", msg_id)
        assert reply["content"]["implementation"] == "persistent-kernel"

    def _stdin_round_trip(self, code: str, answer: str) -> tuple[dict[str, Any], str]:
        self.flush_channels()
        msg_id = self.kc.execute(code, allow_stdin=True)
        request = self.kc.get_stdin_msg(timeout=jkt.TIMEOUT)
        self.kc.input(answer)  # first, so that a failed check leaves no kernel waiting
        # by hand: jupyter_kernel_test's schema wants a number for the boolean "password"
        assert request["msg_type"] == "input_request", request
        assert request["parent_header"]["msg_id"] == msg_id, request
        reply = self.get_non_kernel_info_reply(timeout=jkt.TIMEOUT)
        assert reply is not None
        validate_message(reply, "execute_reply", msg_id)
        assert reply["content"]["status"] == "ok", reply["content"]
        stdout = ""
        while True:
            msg = self.kc.get_iopub_msg(timeout=jkt.TIMEOUT)
            validate_message(msg, msg["msg_type"], msg_id)
            if msg["msg_type"] == "stream":
                stdout += msg["content"]["text"]
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        return request, stdout

    def test_stdin_input(self) -> None:
        request, stdout = self._stdin_round_trip(
            "answer = input('name? ')\nprint('got', answer)", "persistent"
        )
        assert request["content"] == {"prompt": "name? ", "password": False}
        assert "got persistent" in stdout

    def test_stdin_getpass(self) -> None:
        request, stdout = self._stdin_round_trip(
            "import getpass\nsecret = getpass.getpass('pw: ')\nprint(len(secret))", "hunter2"
        )
        assert request["content"] == {"prompt": "pw: ", "password": True}
        assert "7" in stdout

    def test_checkpoints_written_meanwhile(self) -> None:
        def newest() -> int:
            return max((g for s in Store(self.store_root()).sessions() for g in s.generations()),
                       default=0)  # fmt: skip

        before = newest()
        self.flush_channels()
        reply, _ = self.execute_helper(f"checkpointed = {time.time_ns()}")
        assert reply["content"]["status"] == "ok"
        wait_for(lambda: newest() > before, 60, "a checkpoint of the new variable")
        assert len(Store(self.store_root()).sessions()) == 1


class RestoredKernelConformance(PersistentKernelConformance):
    """The same checks on a kernel that restored a checkpoint when it started."""

    @classmethod
    def prepare(cls) -> None:
        harness = KernelHarness(cwd=cls.base / "work", root=cls.store_root())
        try:
            kernel = harness.start(None, args=["--PersistentKernel.checkpoint_interval=3600"])
            kernel.run("import numpy as np\nseeded = {'from': 'the previous kernel'}").check()
            assert "Checkpoint 1 written" in kernel.run("%persist save").check().stdout
        finally:
            harness.close()

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        # the first cell shows the restore summary; take it here, not in a test
        try:
            msg_id = cls.kc.execute("print(seeded['from'], np.__name__)")
            text = ""
            while True:
                msg = cls.kc.get_iopub_msg(timeout=120)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] in ("stream", "display_data"):
                    text += shown(msg) + "\n"
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    break
            # wait_for_ready may have asked kernel_info more than once on a busy
            # machine; its late replies queue on the shell channel before ours
            reply = cls.kc.get_shell_msg(timeout=120)
            while reply["msg_type"] == "kernel_info_reply":
                reply = cls.kc.get_shell_msg(timeout=120)
            assert reply["parent_header"]["msg_id"] == msg_id, reply
            assert RESTORED.search(text), text
            assert "the previous kernel numpy" in text, text
        except BaseException:
            cls.tearDownClass()
            raise


# -- jupyter console ---------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_ESC = r"(?:\x1b\[[0-9;?]*[A-Za-z])*"


def console_prompt(n: int) -> re.Pattern[str]:
    """``In [n]:`` as prompt_toolkit paints it, colour codes between the characters."""
    return re.compile(rf"In {_ESC}\[{_ESC}{n}{_ESC}\]{_ESC}:")


def console_session(folder: Path, lines: list[str]) -> list[str]:
    """Run ``jupyter console`` in a pseudo-terminal, type *lines*, quit; return outputs."""
    jupyter = Path(sys.executable).with_name("jupyter")
    env = dict(os.environ, TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1")
    child = pexpect.spawn(
        str(jupyter),
        ["console", "--kernel", KERNEL_NAME],
        cwd=str(folder),
        env=env,
        encoding="utf-8",
        timeout=120,
        dimensions=(40, 200),
    )
    outputs = []
    try:
        child.expect(console_prompt(1))
        for n, line in enumerate(lines, start=2):
            child.sendline(line)
            child.expect(console_prompt(n))
            # what the cell printed: after the echoed input line, before the prompt
            text = ANSI.sub("", child.before).replace("\r", "")
            outputs.append(text.split("\n", 1)[1] if "\n" in text else "")
        child.sendline("exit")
        if child.expect([re.compile(r"\(\[y\]/n\)\?"), pexpect.EOF]) == 0:
            child.sendline("y")
            child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, (child.exitstatus, child.signalstatus)
    return outputs


@pytest.mark.timeout(300)
def test_jupyter_console_persist_save_and_back(kernels: KernelHarness) -> None:
    folder = kernels.cwd
    saved = console_session(folder, ["v = 'typed in the console'", "%persist save"])
    assert "Checkpoint 1 written" in saved[1], saved
    session = kernels.session(None)  # no notebook: keyed by the folder
    assert session.generations()[0] == 1
    again = console_session(folder, ["print(v)"])
    assert RESTORED.search(again[0]), again
    assert "typed in the console" in again[0].splitlines(), again


# -- interrupts -----------------------------------------------------------------------------


def _wait_started(kernel: Any, msg_id: str) -> None:
    """Wait until the kernel announces it is running request *msg_id*."""
    while True:
        msg = kernel.kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "execute_input":
            return


def _watch(session: Any, seconds: float) -> set[tuple[tuple[int, ...], int]]:
    """Generations and live writers seen while polling *session* for *seconds*."""
    seen = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen.add((tuple(session.generations()), len(session.locks.running_writers())))
        time.sleep(0.05)
    return seen


def test_interrupted_cell_is_never_checkpointed_halfway(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=NOW)
    session = kernels.session()
    kernel.run("x = 1").check()
    assert kernels.wait_generations(session, 1) == [1]
    msg_id = kernel.kc.execute("x = 2; import time; time.sleep(30); x = 3")
    _wait_started(kernel, msg_id)
    # while the cell runs: no new generation, no writer at work
    assert _watch(session, 1.0) == {((1,), 0)}
    kernel.km.interrupt_kernel()
    while True:
        reply = kernel.kc.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert kernel.value("x") == "2"
    # the cell ended: the namespace between cells is checkpointed, with x == 2
    assert kernels.wait_generations(session, 2) == [1, 2]
    kernel.kill()  # no final checkpoint: the next kernel gets generation 2 as it is
    assert session.generations() == [1, 2]
    out = kernels.start().run("print(x)").check()
    assert "from checkpoint 2 " in "\n".join(out.results) + out.stdout, out
    assert out.stdout.splitlines()[-1] == "2", out


def test_checkpoint_timer_waits_for_an_awaiting_cell(kernels: KernelHarness) -> None:
    """A timer that falls due while a cell awaits (the event loop runs) does nothing."""
    interval = 2.0
    kernel = kernels.start(args=[f"--PersistentKernel.checkpoint_interval={interval}"])
    session = kernels.session()
    kernel.run("x = 1").check()
    assert kernels.wait_generations(session, 1, timeout=30) == [1]
    kernel.run("y = 1").check()  # dirty again: a timer falls due ~interval from gen 1
    began = time.monotonic()
    msg_id = kernel.kc.execute("import asyncio\nx = 2\nawait asyncio.sleep(6)\nx = 3")
    _wait_started(kernel, msg_id)
    seen = _watch(session, 4.0)
    assert time.monotonic() - began > interval + 1  # the timer fell due meanwhile
    # no checkpoint; the one live registered writer is the standby forked when
    # the cell started on unsaved changes (it writes only if the kernel ends)
    assert {generations for generations, _ in seen} == {(1,)}, seen
    assert {writers for _, writers in seen} <= {0, 1}, seen
    while True:
        reply = kernel.kc.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    assert reply["content"]["status"] == "ok"
    assert kernels.wait_generations(session, 2, timeout=30) == [1, 2]
    kernel.kill()
    assert session.generations() == [1, 2]
    out = kernels.start().run("print(x, y)").check()
    assert "from checkpoint 2 " in "\n".join(out.results) + out.stdout, out
    assert out.stdout.splitlines()[-1] == "3 1", out
