"""A notebook's own settings (``%persist exclude``/``include``) are never lost silently."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from persistent_kernel.checkpoint import write_checkpoint
from persistent_kernel.errors import UnreadableSettings
from persistent_kernel.store import SessionStore, Store
from persistent_kernel.store.rename import adopt

from .harness import KernelHarness
from .helpers import INFO, wait_until

NOW = ["--PersistentKernel.checkpoint_interval=0"]


def test_missing_settings_are_empty(session: SessionStore) -> None:
    assert session.read_settings() == {}


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(b"{not json"),
        lambda p: p.write_text("[1, 2]"),
        lambda p: os.chmod(p, 0o666),  # writable by anyone: anyone could have emptied it
    ],
    ids=["garbage", "not an object", "untrusted"],
)
def test_unreadable_settings_are_an_error_not_an_empty_list(session: SessionStore, damage) -> None:  # type: ignore[no-untyped-def]
    session.write_settings({"exclude": ["password"]})
    damage(session.path / "settings.json")
    with pytest.raises(UnreadableSettings, match=r"settings\.json"):
        session.read_settings()


def test_a_kernel_saves_nothing_while_its_settings_are_unreadable(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=NOW)
    kernel.run("%persist exclude password").check()
    kernel.run("kept = 1").check()
    session = kernels.session()
    kernels.wait_generations(session, 1)
    kernel.shutdown()
    session.locks.wait_for_writers(60)
    generations = session.generations()
    os.chmod(session.path / "settings.json", 0o666)

    kernel = kernels.start(args=NOW)
    texts = [kernel.run("password = 'hunter2'").check().text]

    def failed() -> bool:
        texts.append(kernel.run("%persist").check().text)
        return "could not be written" in texts[-1] or "cannot be read" in texts[-1]

    wait_until(failed, what="a refused checkpoint")
    texts.append(kernel.run("x = 2").check().text)
    texts.append(kernel.run("y = 3").check().text)
    notices = [
        line for t in texts for line in t.splitlines() if line.startswith("persistent-kernel:")
    ]
    told = [line for line in notices if "settings" in line]
    assert len(told) == 1, notices
    assert "nothing is saved" in told[0]
    assert session.generations() == generations
    for blob in session.objects_dir.iterdir():
        assert b"hunter2" not in blob.read_bytes()


def test_adopting_a_renamed_notebook_keeps_the_adopter_s_excludes(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    old, new = store.session("/nb/old.ipynb"), store.session("/nb/new.ipynb")
    assert write_checkpoint(old, {"kept": 1}, {}, INFO, keep=5).ok
    old.write_settings({"exclude": ["token"], "include": ["password"]})
    new.write_settings({"exclude": ["password"]})  # said in the new notebook before adopting
    adopt(old, new)
    settings = new.read_settings()
    assert set(settings["exclude"]) == {"token", "password"}
    assert settings["include"] == []  # excluded on either side: stays excluded
    assert new.latest()[0].generation == 1


def test_adopting_stops_rather_than_forget_unreadable_settings(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    old, new = store.session("/nb/old.ipynb"), store.session("/nb/new.ipynb")
    assert write_checkpoint(old, {"kept": 1}, {}, INFO, keep=5).ok
    new.write_settings({"exclude": ["password"]})
    os.chmod(new.path / "settings.json", 0o666)
    with pytest.raises(UnreadableSettings):
        adopt(old, new)
    assert old.generations() == [1] and (new.path / "settings.json").exists()


def test_persist_export_to_a_missing_folder_is_one_line(kernels: KernelHarness) -> None:
    kernel = kernels.start(args=NOW)
    kernel.run("x = 1").check()
    out = kernel.run("%persist export no/such/folder/x.pkl")
    assert out.error is None, out.error  # no traceback: IPython prints a UsageError as a line
    assert out.stderr.strip() == "UsageError: no/such/folder: no such directory"
    assert kernel.run("print(x)").check().stdout.strip() == "1"  # the kernel carries on
