"""The kernel end to end: real kernel processes through jupyter_client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from persistent_kernel import cli
from persistent_kernel.store import Store

from .harness import Kernel, KernelHarness
from .helpers import wait_until

SEED = """
import numpy as np
import pandas as pd
a = [100, 'aa']
b = {"x": 100, "y": '200'}
df1 = pd.DataFrame({"i": np.arange(999), "s": [str(i) for i in range(999)]})
"""
CHECK_SEED = "print(a, b, df1.shape, int(df1['i'].sum()), np.__name__, pd.__name__)"
SEED_OUT = "[100, 'aa'] {'x': 100, 'y': '200'} (999, 2) 498501 numpy pandas"
NOW = ["--PersistentKernel.checkpoint_interval=0"]


def test_seed_survives_restart(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=NOW)
    kernel.run(SEED).check()
    kernels.wait_generations(kernels.session(), 1)
    kernel.restart()
    out = kernel.run(CHECK_SEED).check()
    assert SEED_OUT in out.text
    assert "restored 5 variables from checkpoint 1" in out.text
    assert "a, b, df1, np, pd" in out.text
    # the summary is shown once, on the first cell only
    assert "restored" not in kernel.run("print('second')").check().text
    html = next(h for h in out.html if "<table>" in h)  # the report (progress line replaced)
    assert "<table>" in html and "<td style='text-align:left'>df1</td>" in html
    assert "pandas.DataFrame" in html.replace(".core.frame", "") and "%persist clear" in html


def test_shutdown_then_new_kernel_restores(kernels: KernelHarness) -> None:
    # a long interval: only the final checkpoint at shutdown can save this
    kernel = kernels.start(args=["--PersistentKernel.checkpoint_interval=3600"])
    kernel.run(SEED).check()
    assert kernels.session().generations() == []
    kernel.shutdown()
    kernel = kernels.start()
    assert SEED_OUT in kernel.run(CHECK_SEED).check().text


def test_restart_with_long_interval_saves_at_shutdown(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=["--PersistentKernel.checkpoint_interval=3600"])
    kernel.run(SEED).check()
    kernel.restart()
    assert SEED_OUT in kernel.run(CHECK_SEED).check().text


def test_sigkill_after_checkpoint(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=NOW)
    kernel.run(SEED).check()
    kernels.wait_generations(kernels.session(), 1)
    kernel.kill()
    kernel = kernels.start()
    assert SEED_OUT in kernel.run(CHECK_SEED).check().text


ENDINGS: dict[str, Callable[[Kernel], object]] = {
    "SIGTERM between cells": lambda kernel: os.kill(kernel.pid, signal.SIGTERM),
    "exit() in a cell": lambda kernel: kernel.kc.execute("exit()"),
}


@pytest.mark.parametrize("end", ENDINGS.values(), ids=ENDINGS.keys())
def test_the_kernel_ending_by_itself_saves(
    kernels: KernelHarness, end: Callable[[Kernel], object]
) -> None:
    # a long interval: only the final checkpoint can save this
    kernel = kernels.start(args=["--PersistentKernel.checkpoint_interval=3600"])
    kernel.run(SEED).check()
    end(kernel)
    kernel.wait_dead()
    kernel.shutdown()
    kernel = kernels.start()
    assert SEED_OUT in kernel.run(CHECK_SEED).check().text


def test_nothing_written_while_nothing_changed(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=NOW)
    kernel.run("x = [1, 2, 3]").check()
    session = kernels.session()
    kernels.wait_generations(session, 1)
    before = {p.name: p.stat().st_mtime_ns for p in session.objects_dir.iterdir()}
    kernel.run("y = len(x)").check()  # a cell that binds the same value again ...
    kernel.run("y = 3").check()
    kernels.wait_generations(session, 2)
    time.sleep(1)
    # ... commits nothing new: no new generation and no blob rewritten
    assert session.generations() == [1, 2]
    after = {p.name: p.stat().st_mtime_ns for p in session.objects_dir.iterdir()}
    assert {k: after[k] for k in before} == before


def test_excludes_from_argv(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=[*NOW, "--PersistentKernel.exclude=['secret*', 'token']"])
    kernel.run("secret_key = 's3cr3t'\ntoken = 'abc'\nkept = 1").check()
    kernels.wait_generations(kernels.session(), 1)
    blobs = b"".join(p.read_bytes() for p in kernels.session().objects_dir.iterdir())
    assert b"s3cr3t" not in blobs
    kernel.restart()
    out = kernel.run("print(kept, 'secret_key' in dir(), 'token' in dir())").check()
    assert "1 False False" in out.text
    assert "excluded by configuration" in out.text


def test_unpicklable_objects_are_isolated(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=NOW)
    kernel.run(
        """
import socket, sqlite3, threading
gen = (i for i in range(3))
sock = socket.socket()
conn = sqlite3.connect(":memory:")
lock = threading.Lock()
fh = open("data.txt", "w")
class Bad:
    def __reduce__(self):
        raise RuntimeError("no pickling me")
bad = Bad()
deep = []
cur = deep
for _ in range(100000):
    cur.append([])
    cur = cur[0]
good = {"still": "here"}
"""
    ).check()
    kernels.wait_generations(kernels.session(), 1)
    # The writer lets go of its lock a moment before its result reaches the kernel,
    # which is what %persist shows: asked until it shows (a deadline, no sleep guess).
    names = ("gen", "sock", "conn", "fh", "bad", "deep")
    shown: list[str] = []

    def shows_them() -> bool:
        shown.append(kernel.run("%persist").check().text)
        return all(f"  {n}: " in shown[-1] for n in names)

    wait_until(shows_them, 60, "the checkpoint's left-out variables in %persist")
    status = shown[-1]
    assert "open for writing" in status and "no pickling me" in status
    assert "too deeply nested" in status
    kernel.run("sock.close(); conn.close(); fh.close()").check()
    kernel.restart()
    out = kernel.run("print(good, Bad.__name__, lock.acquire(blocking=False))").check()
    assert "{'still': 'here'} Bad True" in out.text  # an unlocked lock comes back unlocked


def test_shared_references_and_notebook_definitions(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=NOW)
    kernel.run(
        """
import numpy as np
import collections as co
from os import path as osp
l1 = [1, 2]
l2 = l1
d = {'k': l1}
class P:
    def hello(self):
        return "hi " + str(factor)
p = P()
factor = 3
square = lambda v: v * v * factor
def scaled(v):
    return square(v) + len(l1)
"""
    ).check()
    kernels.wait_generations(kernels.session(), 1)
    kernel.restart()
    out = kernel.run(
        "l1.append(9)\n"
        "print(l2 is l1, d['k'] is l1, l2, isinstance(p, P), p.hello(), square(2), scaled(2),"
        " np.__name__, co.OrderedDict.__name__, osp.__name__)\n"
        "factor = 10\nprint(square(2))"
    ).check()
    assert "True True [1, 2, 9] True hi 3 12 15 numpy OrderedDict posixpath" in out.text
    # a restored function sees the live globals, not a frozen copy
    assert out.text.strip().endswith("40")


def test_two_notebooks_in_one_folder(kernels: KernelHarness) -> None:
    first = kernels.start("one.ipynb", args=NOW)
    second = kernels.start("two.ipynb", args=NOW)
    first.run("who = 'one'").check()
    second.run("who = 'two'").check()
    kernels.wait_generations(kernels.session("one.ipynb"), 1)
    kernels.wait_generations(kernels.session("two.ipynb"), 1)
    first.restart()
    second.restart()
    assert first.value("who") == "'one'"
    assert second.value("who") == "'two'"


def test_session_env_override_and_no_notebook(kernels: KernelHarness) -> None:
    shared = {"PERSISTENT_KERNEL_SESSION": "my-analysis"}
    kernel = kernels.start("one.ipynb", args=NOW, env=shared)
    kernel.run("z = 42").check()
    kernel.shutdown()
    other = kernels.start("renamed.ipynb", env=shared)
    assert other.value("z") == "42"
    # no notebook path at all: keyed by the working directory
    console = kernels.start(None, args=NOW)
    console.run("c = 'cwd'").check()
    console.shutdown()
    assert kernels.start(None).value("c") == "'cwd'"


def test_persist_clear_gives_a_clean_start(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=NOW)
    kernel.run("kept = 1").check()
    kernels.wait_generations(kernels.session(), 1)
    out = kernel.run("%persist clear").check()
    assert "cleared" in out.text
    assert kernels.session().generations() == []
    kernel.restart()
    assert kernel.run("print('kept' in dir())").check().text.strip() == "False"


def test_persist_clear_stays_in_force_until_the_restart(kernels: KernelHarness) -> None:
    """Clear, `%persist`, restart: the old variables are gone. Cells after the clear save
    what they assign, never what the clear let go of."""
    kernel = kernels.start(args=NOW)
    kernel.run("import json\nkept = [1]").check()
    session = kernels.session()
    kernels.wait_generations(session, 1)
    kernel.run("%persist clear").check()
    status = kernel.run("%persist").check().stdout
    assert "Not saved since %persist clear, until assigned again: json, kept" in status
    assert "Nothing changed since" not in status and "Nothing to save yet." in status
    kernel.run("kept.append(2)\nprint(kept)").check()  # changed in place, not assigned
    kernel.run("new = 3").check()
    kernels.wait_generations(session, 1)
    kernel.restart()
    assert kernel.value("('json' in dir(), 'kept' in dir(), new)") == "(False, False, 3)"


def test_persist_save_and_status(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=["--PersistentKernel.checkpoint_interval=3600"])
    kernel.run("v = list(range(10))").check()
    status = kernel.run("%persist").check().text
    assert "No checkpoint written" in status and "when the kernel is idle" in status
    saved = kernel.run("%persist save").check().text
    assert "Checkpoint 1 written" in saved
    # returns after the commit: the generation is on disk when the cell ends
    assert kernels.session().generations() == [1]
    status = kernel.run("%persist").check().text
    assert "generation 1" in status and "v" in status
    assert "invalid choice: 'bogus'" in kernel.run("%persist bogus").stderr


def test_persist_status_tells_the_truth(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=["--PersistentKernel.checkpoint_interval=3600"])
    status = kernel.run("%persist").check().stdout
    assert "No checkpoint written by this kernel yet.\nNothing to save yet." in status
    kernel.run("v = list(range(1000))\ntoken = 'x'").check()
    status = kernel.run("%persist").check().stdout
    assert "Changes will be checkpointed when the kernel is idle, in 59 min" in status
    kernel.run("%persist save").check()
    for _ in range(2):  # `%persist` alone changes nothing: it does not make itself pending
        status = kernel.run("%persist").check().stdout
        assert "Saved (2): token, v\n" in status and "(0 B written)" not in status
        assert "Nothing changed since the last checkpoint." in status
        assert "when the kernel is idle" not in status
    kernel.run("%persist exclude token").check()
    status = kernel.run("%persist").check().stdout
    assert "Saved (1): v\n" in status
    assert "Excluded since (left out of the next checkpoint): token" in status
    assert "will be checkpointed when the kernel is idle, in 5" in status
    kernel.run("%persist save").check()
    history = kernel.run("%persist history").check().stdout
    assert "excluded token" in history and "removed" not in history
    shown = cli.show_session(str(kernels.root), str(kernels.cwd / "notebook.ipynb"))
    assert [(row["name"], row["reason"]) for row in shown["variables"]] == [
        ("token", "excluded by %persist exclude"),
        ("v", None),
    ]
    kernel.run("%persist off").check()
    kernel.run("w = 1").check()
    status = kernel.run("%persist").check().stdout
    assert "are not checkpointed automatically; %persist save saves them" in status


def test_the_restore_report_shows_what_did_not_come_back(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=NOW)
    kernel.run("import numpy as np\nbig = np.arange(10**5)\nalias = big").check()
    kernel.run("n = 1\ngen = (i for i in range(3))\nm = 2").check()
    kernels.wait_generations(kernels.session(), 2)
    kernel.restart()
    out = kernel.run("pass").check()
    assert "gen: not saved: cannot pickle a generator's frame" in out.text
    assert "last assigned by: n = 1 ... gen = (i for i in range(3)) ..." in out.text
    html = next(h for h in out.html if "<table>" in h)
    assert "<pre>n = 1\ngen = (i for i in range(3))\nm = 2" in html  # the cell, whole
    row = html.split("<td style='text-align:left'>gen</td>")[1].split("</tr>")[0]
    assert "<td style='text-align:left'>generator</td>" in row and "TypeError" not in row
    sizes = [
        html.split(f"<td style='text-align:left'>{name}</td>")[1].split("</td>")[1]
        for name in ("alias", "big")
    ]
    assert sorted(size.endswith("KiB") for size in sizes) == [False, True]  # counted once
    assert "(restored at start)" in kernel.run("%persist").check().stdout
    out = kernel.run("%persist rerun gen").check()
    assert "Running again: n = 1 ..." in out.stdout and kernel.value("list(gen)") == "[0, 1, 2]"


def test_restore_false(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=NOW)
    kernel.run("gone = 1").check()
    kernels.wait_generations(kernels.session(), 1)
    kernel.shutdown()
    kernel = kernels.start(args=["--PersistentKernel.restore=False"])
    assert kernel.value("'gone' in dir()") == "False"


def test_config_from_ipython_kernel_config(kernels: KernelHarness, jupyter_env: dict) -> None:
    profile = jupyter_env["IPYTHONDIR"] / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_kernel_config.py").write_text(
        "c.PersistentKernel.checkpoint_interval = 0\nc.PersistentKernel.exclude = ['hidden_*']\n"
    )
    kernel = kernels.start()
    assert kernel.value("get_ipython().kernel.checkpoint_interval") == "0.0"
    kernel.run("hidden_x = 1\nshown = 2").check()
    kernel.run("%persist save").check()
    manifest, _ = kernels.session().latest()
    assert "shown" in manifest.content["variables"]
    assert "hidden_x" not in manifest.content["variables"]


def test_config_at_runtime(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=["--PersistentKernel.checkpoint_interval=3600"])
    kernel.run("%config PersistentKernel.checkpoint_interval = 0").check()
    assert kernel.value("get_ipython().kernel.checkpoint_interval") == "0.0"
    kernel.run("x = 5").check()
    kernels.wait_generations(kernels.session(), 1, timeout=20)


def test_slow_final_checkpoint_survives_restart(kernels: KernelHarness) -> None:
    """A final checkpoint that takes longer than jupyter_client's 2.5 s budget."""
    kernel = kernels.start(args=["--PersistentKernel.checkpoint_interval=3600"])
    kernel.run(
        """
import time
class Slow:
    def __init__(self, v):
        self.v = v
    def __reduce__(self):
        time.sleep(5)
        return (Slow, (self.v,))
s = Slow('made it')
"""
    ).check()
    began = time.monotonic()
    kernel.restart()
    assert kernel.value("s.v") == "'made it'"
    assert time.monotonic() - began >= 5  # the new kernel did wait for the writer


def test_plain_data_pickled_on_a_second_core_comes_back(kernels: KernelHarness) -> None:
    """Two large trees of dicts, lists and tuples: where the machine has a second
    core, the writer shares the smaller with a helper process, and both come back."""
    from persistent_kernel import memory

    kernel = kernels.start(args=NOW)
    kernel.run(
        "table = {f'k{i}': (i, f'v{i}') for i in range(150_000)}\n"
        "records = [{'id': i, 'n': str(i)} for i in range(100_000)]"
    ).check()
    kernels.wait_generations(kernels.session(), 1)
    k = "get_ipython().kernel.checkpointer"
    helped = kernel.value(f"({k}.wait_for_writer(60), {k}.last_result.second_core)[1]")
    assert helped == ("['records']" if memory.cores() > 1 else "[]")
    kernel.restart()
    out = kernel.run("print(len(table), table['k149999'], len(records), records[-1])").check()
    assert "150000 (149999, 'v149999') 100000 {'id': 99999, 'n': '99999'}" in out.text


def test_persist_list_json(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=NOW)
    kernel.run("alpha = 1\nbeta = [1, 2]").check()
    kernels.wait_generations(kernels.session(), 1)
    out = subprocess.run(
        [sys.executable, "-m", "persistent_kernel", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ,
    )
    rows = json.loads(out.stdout)
    assert len(rows) == 1
    row = rows[0]
    assert row["notebook"] == str(kernels.cwd / "notebook.ipynb")
    assert row["variables"] == ["alpha", "beta"]
    assert row["generations"] == 1 and row["size"] > 0


def test_checkpoint_files_are_private(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=NOW)
    kernel.run("x = 1").check()
    session = kernels.session()
    kernels.wait_generations(session, 1)
    for path in [session.path, *session.path.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    assert Store(kernels.root).sessions()[0].path == session.path


def test_ipykernel_features_keep_working(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=NOW)
    kernel.run("import os\nvalue = 41").check()
    reply = kernel.kc.complete("os.pa", 5, reply=True, timeout=30)
    assert "path" in reply["content"]["matches"]
    reply = kernel.kc.inspect("value", 5, reply=True, timeout=30)
    assert reply["content"]["found"]
    kernel.kc.is_complete("for i in x:")
    assert kernel.kc.get_shell_msg(timeout=30)["content"]["status"] == "incomplete"
    out = kernel.run("from IPython.display import display, HTML\ndisplay(HTML('<b>x</b>'))")
    assert out.check().results
    # inline plots come back as images
    images = []
    kernel.kc.execute_interactive(
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()",
        output_hook=lambda m: images.append(m["content"].get("data", {}).get("image/png")),
        timeout=60,
    )
    assert any(images)
    # comms
    kernel.kc.comm_info()
    assert kernel.kc.get_shell_msg(timeout=30)["content"]["status"] == "ok"
    # an interrupt stops a long cell and the kernel stays usable
    kernel.kc.execute("import time\ntime.sleep(30)")
    time.sleep(1)
    kernel.km.interrupt_kernel()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        msg = kernel.kc.get_shell_msg(timeout=20)
        if msg["msg_type"] == "execute_reply":
            assert msg["content"]["status"] == "error"
            break
    assert kernel.value("value + 1") == "42"


SLOW_LOAD = """
import time
def slow_make_{n}(v):
    time.sleep({seconds})
    return v
class SlowLoad{n}:
    def __init__(self, v):
        self.v = v
    def __reduce__(self):
        return (slow_make_{n}, (self.v,))
s{n} = SlowLoad{n}('payload {n}')
"""


def test_kernel_answers_while_restoring_and_first_cell_waits(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=NOW)
    kernel.run(SLOW_LOAD.format(n=1, seconds=6)).check()
    kernels.wait_generations(kernels.session(), 1)
    kernel.restart()  # returns once kernel_info is answered
    began = time.monotonic()
    out = kernel.run("print(s1)").check()
    # the first cell waited for the 6 s restore, showing its progress meanwhile
    assert time.monotonic() - began >= 3
    assert "payload 1" in out.text
    assert any("restoring checkpoint 1" in r for r in out.results), out.results


def test_interrupting_a_restore_keeps_what_was_loaded(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=NOW)
    kernel.run(SLOW_LOAD.format(n=1, seconds=4) + SLOW_LOAD.format(n=2, seconds=4)).check()
    manifest, _ = kernels.wait_generations(kernels.session(), 1) and kernels.session().latest()
    assert len(manifest.content["groups"]) >= 2  # s1 and s2 load one after the other
    kernel.restart()
    # s1 takes 4 s to load; the interrupt lands while it loads, before s2 starts
    msg_id = kernel.kc.execute("print('after', 's1' in dir(), 's2' in dir())")
    time.sleep(2)
    kernel.km.interrupt_kernel()
    text = ""
    while True:
        msg = kernel.kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            text += msg["content"]["text"]
        elif msg["msg_type"] in ("display_data", "update_display_data"):
            text += msg["content"]["data"]["text/plain"]
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    assert "after True False" in text, text
    assert "the restore was interrupted" in text and "were loaded before it stopped" in text
    assert "stay in later checkpoints" in text and "%persist restore" in text
    # later checkpoints keep s2 as it was, so the next start brings it back
    kernel.run("more = 1").check()
    kernels.wait_generations(kernels.session(), 2)
    kernel.restart()
    assert kernel.value("(s1, s2, more)") == "('payload 1', 'payload 2', 1)"


def test_dill_dump_module_in_the_kernel_saves_the_notebook(kernels: KernelHarness) -> None:
    """The kernel imports dill only once __main__ is the notebook's namespace."""
    kernel = kernels.start(args=NOW)
    kernel.run("import dill\nmarker_value = 41\ndill.dump_module('session.pkl')").check()
    out = kernel.run("print(dill.load_module_asdict('session.pkl')['marker_value'])").check()
    assert out.text.strip().endswith("41")


def write_notebook(path: Path, ids: list[str]) -> None:
    cells = [{"id": i, "cell_type": "code", "source": "", "metadata": {}, "outputs": [],
              "execution_count": None} for i in ids]  # fmt: skip
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4,
                                "nbformat_minor": 5}))  # fmt: skip


def test_a_renamed_notebook_keeps_its_state(kernels: KernelHarness) -> None:
    write_notebook(kernels.cwd / "draft.ipynb", ["c1", "c2", "c3"])
    write_notebook(kernels.cwd / "other.ipynb", ["o1", "o2"])
    for name, value in (("draft.ipynb", "'mine'"), ("other.ipynb", "'theirs'")):
        kernel = kernels.start(name, args=NOW)
        kernel.run(f"x = {value}").check()
        kernels.wait_generations(kernels.session(name), 1)
        kernel.shutdown()
    # "Duplicate": the original stays, so the copy starts clean
    (kernels.cwd / "copy.ipynb").write_text((kernels.cwd / "draft.ipynb").read_text())
    assert kernels.start("copy.ipynb").value("'x' in dir()") == "False"
    # a rename (the server passes the new path at the next start) keeps its state
    (kernels.cwd / "draft.ipynb").rename(kernels.cwd / "final.ipynb")
    (kernels.cwd / "other.ipynb").unlink()  # gone too, but its cells are not ours
    kernel = kernels.start("final.ipynb")
    out = kernel.run("print(x)").check()
    assert out.text.strip().endswith("mine")
    assert f"renamed from {kernels.cwd / 'draft.ipynb'}" in out.text
    assert kernels.session("draft.ipynb").generations() == []


def test_persist_history_and_restore_an_earlier_generation(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=["--PersistentKernel.checkpoint_interval=3600"])
    for cell in ("a = 1\nb = [1]", "a = 2\nc = 'new'", "del b"):
        kernel.run(cell).check()
        kernel.run("%persist save").check()
    header, *history = kernel.run("%persist history").check().stdout.splitlines()
    assert header.split() == ["GEN", "CREATED", "SIZE", "CHANGES"]
    assert len(history) == 3
    assert "added a, b" in history[0]
    assert "added c; changed a" in history[1]
    assert "removed b" in history[2]
    out = kernel.run("%persist restore 1 b").check().stdout
    assert "Restored 1 variable(s) from generation 1" in out
    assert kernel.value("(a, b, c)") == "(2, [1], 'new')"  # only b came back
    kernel.run("%persist restore 1").check()
    assert kernel.value("a") == "1"
    assert "no variable zzz" in kernel.run("%persist restore 1 zzz").stderr


def test_persist_exclude_include_are_kept_across_restarts(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=[*NOW, "--PersistentKernel.exclude=['cfg_*']"])
    kernel.run("%persist exclude token* password").check()
    kernel.run("token_a = 'x'\npassword = 'y'\ncfg_one = 1\nkept = 2").check()
    kernel.run("%persist include cfg_one").check()
    kernel.run("%persist save").check()
    manifest, _ = kernels.session().latest()
    assert set(manifest.content["variables"]) == {"kept", "cfg_one"}
    kernel.restart()  # the notebook's own lists survive the restart
    kernel.run("token_b = 'z'\n%persist save").check()
    manifest, _ = kernels.session().latest()
    assert "token_b" not in manifest.content["variables"]
    assert "kept" in manifest.content["variables"]


def test_persist_off_on_and_help(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=NOW)
    kernel.run("%persist off").check()
    kernel.run("x = 1").check()
    time.sleep(1.0)
    assert kernels.session().generations() == []
    assert "Automatic checkpoints are off" in kernel.run("%persist").check().stdout
    kernel.run("%persist on").check()
    kernel.run("y = 2").check()
    kernels.wait_generations(kernels.session(), 1)
    doc = kernel.kc.inspect("%persist", 8, detail_level=0, reply=True, timeout=30)
    text = doc["content"]["data"]["text/plain"]
    for command in ("status", "save", "history", "restore", "exclude", "include", "off",
                    "on", "clear", "export", "import"):  # fmt: skip
        assert f"{command}:" in text, command


def test_persist_export_then_import_in_another_notebook(kernels: KernelHarness) -> None:
    """The .RData workflow: export from one notebook, import into another."""
    kernel = kernels.start("one.ipynb", args=["--PersistentKernel.checkpoint_interval=3600"])
    kernel.run(
        "import numpy as np\nSCALE = 3\ndef scaled(v):\n    return v * SCALE\n"
        "arr = np.arange(5)\nshared = [1]\nholder = {'s': shared}"
    ).check()
    out = kernel.run("%persist export session.pkl").check().text
    assert "Exported" in out and "dill.load_module('session.pkl')" in out
    assert (kernels.cwd / "session.pkl").stat().st_mode & 0o777 == 0o600
    other = kernels.start("two.ipynb", args=["--PersistentKernel.checkpoint_interval=3600"])
    out = other.run("%persist import session.pkl").check().text
    assert "Imported" in out and "ran the file's code" in out
    assert other.value("(scaled(2), int(arr.sum()), holder['s'] is shared)") == "(6, 10, True)"
