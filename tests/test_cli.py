"""``persistent-kernel`` subcommands: the data each returns, what main prints, exit codes."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dill
import numpy as np
import pytest

from persistent_kernel import cli
from persistent_kernel.checkpoint import write_checkpoint
from persistent_kernel.cli import main
from persistent_kernel.errors import NoCheckpoint, StoreBusy
from persistent_kernel.store import SessionStore, Store

from .harness import KernelHarness
from .helpers import future_generation

DAY = 86400.0


def checkpoint(
    root: Path, key: str, values: dict[str, Any], skipped: dict[str, str] | None = None
) -> SessionStore:
    session = Store(root).session(key)
    result = write_checkpoint(
        session, values, skipped or {}, {"session": key, "notebook": key}, keep=10
    )
    assert result.ok and not result.unchanged
    return session


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``main(argv)``: its exit code (0 when it returns), stdout and stderr."""
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def age(session: SessionStore, generation: int, seconds: float) -> None:
    """Make *generation* look *seconds* older; re-signed, so it stays ours."""
    path = session.manifest_path(generation)
    raw = json.loads(path.read_text())
    raw["created"] -= seconds
    raw["signature"] = session.signer.sign(raw)
    path.write_text(json.dumps(raw))


def corrupt(session: SessionStore, generation: int) -> None:
    session.manifest_path(generation).write_text("{not json")


@pytest.fixture
def root(jupyter_env: dict[str, Path]) -> Path:
    """The default storage root, inside this test's own Jupyter data dir."""
    return jupyter_env["checkpoints"]


@pytest.fixture
def nb(jupyter_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A notebook in the working directory, as a Jupyter server would key it."""
    path = jupyter_env["work"] / "analysis.ipynb"
    path.write_text("{}")
    monkeypatch.chdir(jupyter_env["work"])
    return path


@pytest.fixture
def three(root: Path, nb: Path) -> SessionStore:
    """Three generations of the notebook's session."""
    checkpoint(root, str(nb), {"a": 1, "b": [1]})
    checkpoint(root, str(nb), {"a": 1, "b": [2], "c": 3})
    shared = [7]
    return checkpoint(
        root,
        str(nb),
        {"b": [2], "c": 4, "np": np, "l1": shared, "l2": shared, "arr": np.zeros(1000)},
        {"token": "excluded by configuration"},
    )


def test_default_root_is_the_kernels(root: Path) -> None:
    assert cli.default_root() == str(root)


# -- list ------------------------------------------------------------------------------


def test_list(capsys: pytest.CaptureFixture[str], root: Path, three: SessionStore) -> None:
    checkpoint(root, "other-key", {"z": 0})
    rows = cli.list_sessions(str(root))
    assert [r["session"] for r in rows] == ["other-key", three.key]  # newest first
    assert rows[1]["generations"] == 3 and rows[1]["newest"] == 3
    assert rows[1]["variables"] == ["arr", "b", "c", "l1", "l2", "np"]

    code, out, _ = run(capsys, "list", "--json")
    assert code == 0 and json.loads(out) == rows
    code, out, _ = run(capsys, "list")
    assert code == 0 and "3 generation(s), newest 3" in out and "other-key" in out


def test_list_nothing(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    assert run(capsys, "list") == (0, "No checkpoints.\n", "")


# -- show ------------------------------------------------------------------------------


def test_show(capsys: pytest.CaptureFixture[str], root: Path, three: SessionStore) -> None:
    data = cli.show_session(str(root), "analysis.ipynb")
    assert data["session"] == three.key
    assert data["generation"] == 3 and data["generations"] == [1, 2, 3]
    assert data["python"] == ".".join(map(str, sys.version_info[:3]))
    assert data["packages"] == {"numpy": np.__version__}
    rows = {r["name"]: r for r in data["variables"]}
    assert list(rows) == ["arr", "b", "c", "l1", "l2", "np", "token"]
    assert rows["arr"]["type"] == "numpy.ndarray" and rows["arr"]["size"] > 8000
    assert rows["arr"]["status"] == "saved" and rows["arr"]["reason"] is None
    assert rows["l1"]["shared_with"] == ["l2"] and rows["l1"]["size"] == rows["l2"]["size"]
    assert rows["np"] == {
        "name": "np", "type": "module", "status": "saved", "reason": None, "size": 0,
        "module": "numpy", "shared_with": [], "carried": False,
    }  # fmt: skip
    assert rows["token"]["status"] == "skipped"
    assert rows["token"]["reason"] == "excluded by configuration"

    code, out, _ = run(capsys, "show", "analysis.ipynb", "--json")
    assert code == 0 and json.loads(out) == data
    code, out, _ = run(capsys, "show", "analysis.ipynb")
    assert code == 0
    assert "Generation: 3 (of 3 kept)" in out
    lines = out.splitlines()
    assert any(line.split()[:2] == ["NAME", "TYPE"] for line in lines)
    assert any(line.split()[:2] == ["l1", "list"] and "saved (with l2)" in line for line in lines)
    assert any("skipped: excluded by configuration" in line for line in lines)
    assert any("saved (import numpy)" in line for line in lines)


def test_show_generation(capsys: pytest.CaptureFixture[str], three: SessionStore) -> None:
    code, out, _ = run(capsys, "show", "analysis.ipynb", "--generation", "1", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["generation"] == 1
    assert [r["name"] for r in data["variables"]] == ["a", "b"]


def test_show_names_a_session_three_ways(root: Path, three: SessionStore, nb: Path) -> None:
    by_path = cli.show_session(str(root), "analysis.ipynb")
    assert cli.show_session(str(root), str(nb)) == by_path  # the key itself
    assert cli.show_session(str(root), three.path.name) == by_path  # its directory


def test_show_unpickles_nothing(
    root: Path, three: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(dill, "loads", refuse)
    assert len(cli.show_session(str(root), "analysis.ipynb")["variables"]) == 7
    assert len(cli.session_history(str(root), "analysis.ipynb")["generations"]) == 3


def test_show_errors(capsys: pytest.CaptureFixture[str], three: SessionStore) -> None:
    code, out, err = run(capsys, "show", "nowhere.ipynb")
    assert (code, out) == (3, "")
    assert err.startswith("persistent-kernel: there are no checkpoints of nowhere.ipynb")
    assert err.count("\n") == 1

    code, _, err = run(capsys, "show", "analysis.ipynb", "--generation", "9")
    assert code == 3 and err.strip().endswith("has no generation 9")

    assert run(capsys, "show", "analysis.ipynb", "--generation", "x")[0] == 2
    assert run(capsys, "show", "analysis.ipynb", "--generation", "0")[0] == 2

    corrupt(three, 3)  # the newest is unreadable: the one before is shown, with a warning
    code, out, _ = run(capsys, "show", "analysis.ipynb")
    assert code == 0 and "Generation: 2" in out and "Warning: generation 3" in out
    code, _, err = run(capsys, "show", "analysis.ipynb", "--generation", "3")
    assert code == 1 and "not valid JSON" in err
    corrupt(three, 2)
    corrupt(three, 1)
    code, _, err = run(capsys, "show", "analysis.ipynb")
    assert code == 1 and "can be read" in err


# -- history ---------------------------------------------------------------------------


def test_history(capsys: pytest.CaptureFixture[str], root: Path, three: SessionStore) -> None:
    data = cli.session_history(str(root), "analysis.ipynb")
    assert data["session"] == three.key
    first, second, third = data["generations"]
    assert (first["generation"], first["previous"]) == (1, None)
    assert (first["added"], first["changed"], first["removed"]) == (["a", "b"], [], [])
    assert (second["previous"], second["added"], second["changed"]) == (1, ["c"], ["b"])
    assert second["removed"] == []
    assert third["added"] == ["arr", "l1", "l2", "np"]
    assert third["changed"] == ["c"]  # b is the same value: unchanged
    assert third["removed"] == ["a"]
    assert third["variables"] == ["arr", "b", "c", "l1", "l2", "np"]
    assert all(row["created"] and row["size"] and row["error"] is None for row in (first, third))

    code, out, _ = run(capsys, "history", "analysis.ipynb", "--json")
    assert code == 0 and json.loads(out) == data
    code, out, _ = run(capsys, "history", "analysis.ipynb")
    assert code == 0
    assert "added a, b" in out and "added c; changed b" in out
    assert "added arr, l1, l2, np; changed c; removed a" in out


def test_history_over_an_unreadable_generation(root: Path, three: SessionStore) -> None:
    corrupt(three, 2)
    _, second, third = cli.session_history(str(root), "analysis.ipynb")["generations"]
    assert "not valid JSON" in second["error"]
    assert third["previous"] == 1  # compared with generation 1
    assert third["added"] == ["arr", "c", "l1", "l2", "np"]
    assert (third["changed"], third["removed"]) == (["b"], ["a"])


def test_history_of_nothing(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    Store(root).session("emptied").ensure()
    code, _, err = run(capsys, "history", "emptied")
    assert code == 3 and "has no checkpoints" in err


# -- export ----------------------------------------------------------------------------


def test_export(capsys: pytest.CaptureFixture[str], three: SessionStore, tmp_path: Path) -> None:
    path = tmp_path / "state.pkl"
    code, out, _ = run(capsys, "export", "analysis.ipynb", str(path))
    assert code == 0
    assert "Exported 6 variable(s) from generation 3" in out and "dill.load_module(" in out
    loaded = dill.load_module_asdict(str(path))
    assert loaded["c"] == 4 and loaded["l2"] is loaded["l1"] and loaded["np"] is np
    assert path.stat().st_mode & 0o777 == 0o600


def test_export_names_generation_json(
    capsys: pytest.CaptureFixture[str], three: SessionStore, tmp_path: Path
) -> None:
    path = tmp_path / "some.pkl"
    code, out, _ = run(
        capsys, "export", "analysis.ipynb", str(path), "a", "b", "--generation", "2", "--json"
    )
    assert code == 0
    data = json.loads(out)
    assert data["session"] == three.key and data["generation"] == 2
    assert data["written"] == ["a", "b"] and data["skipped"] == {}
    assert data["path"] == str(path) and data["size"] == path.stat().st_size
    loaded = dill.load_module_asdict(str(path))
    assert (loaded["a"], loaded["b"]) == (1, [2]) and "c" not in loaded


def test_export_errors(
    capsys: pytest.CaptureFixture[str], three: SessionStore, tmp_path: Path
) -> None:
    path = tmp_path / "x.pkl"
    code, _, err = run(capsys, "export", "analysis.ipynb", str(path), "nope")
    assert code == 3 and "no variable named nope" in err
    code, _, err = run(capsys, "export", "analysis.ipynb", str(path), "--generation", "8")
    assert code == 3 and "has no generation 8" in err
    code, _, err = run(capsys, "export", "nowhere", str(path))
    assert code == 3
    code, _, err = run(capsys, "export", "analysis.ipynb", str(tmp_path / "no" / "x.pkl"))
    assert code == 1 and err.startswith(f"persistent-kernel: {tmp_path / 'no'}: ")
    assert not path.exists()
    assert run(capsys, "export", "analysis.ipynb")[0] == 2


# -- rm --------------------------------------------------------------------------------


def test_rm(capsys: pytest.CaptureFixture[str], three: SessionStore) -> None:
    code, out, _ = run(capsys, "rm", "analysis.ipynb")
    assert code == 0
    assert out.startswith(f"Removed the checkpoints of {three.key} (3 generation(s), ")
    assert not three.path.exists()
    code, _, err = run(capsys, "rm", "analysis.ipynb")
    assert code == 3 and "no checkpoints of analysis.ipynb" in err


def test_rm_json(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    session = checkpoint(root, "k", {"x": 1})
    code, out, _ = run(capsys, "rm", "k", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["session"] == "k" and data["generations"] == 1 and data["disk_usage"] > 0
    assert data["directory"] == str(session.path) and not session.path.exists()


def test_rm_waits_for_the_lock_and_spares_a_live_writer(
    capsys: pytest.CaptureFixture[str], root: Path, three: SessionStore
) -> None:
    with three.locks.locked(timeout=1), pytest.raises(StoreBusy):
        cli.remove_session(str(root), "analysis.ipynb", lock_timeout=0.2)
    fd, path = three.locks.register_writer()
    try:
        code, _, err = run(capsys, "rm", "analysis.ipynb")
        assert code == 1 and "is writing a checkpoint" in err
    finally:
        three.locks.release_writer(fd, path)
    assert three.generations() == [1, 2, 3]


# -- prune -----------------------------------------------------------------------------


@pytest.fixture
def aged(root: Path, three: SessionStore) -> dict[str, SessionStore]:
    """Sessions 40 days old, 2 hours old, fresh, and an unreadable one 40 days old."""
    old = checkpoint(root, "old", {"x": 1})
    age(old, 1, 40 * DAY)
    hours = checkpoint(root, "hours", {"x": 1})
    age(hours, 1, 2 * 3600)
    broken = checkpoint(root, "broken", {"x": 1})
    corrupt(broken, 1)
    long_ago = time.time() - 40 * DAY
    for path in [broken.path, *broken.path.rglob("*")]:
        os.utime(path, (long_ago, long_ago))
    return {"old": old, "hours": hours, "fresh": three, "broken": broken}


def test_prune(capsys: pytest.CaptureFixture[str], aged: dict[str, SessionStore]) -> None:
    code, out, _ = run(capsys, "prune", "--older-than", "30d")
    assert code == 0
    assert sorted(line.split()[1] for line in out.splitlines()) == [
        aged["broken"].path.name,  # no readable manifest: named by its directory
        "old",
    ]
    assert all(line.startswith("Removed ") for line in out.splitlines())
    assert not aged["old"].path.exists() and not aged["broken"].path.exists()
    assert aged["hours"].path.exists() and aged["fresh"].path.exists()


def test_prune_dry_run_json(
    capsys: pytest.CaptureFixture[str], aged: dict[str, SessionStore]
) -> None:
    code, out, _ = run(capsys, "prune", "--older-than", "90m", "--dry-run", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["dry_run"] is True and data["older_than"] == 5400
    assert sorted(r["directory"] for r in data["removed"]) == sorted(
        str(aged[k].path) for k in ("old", "hours", "broken")
    )
    assert all(r["age"] > 5400 for r in data["removed"]) and data["failed"] == []
    assert all(s.path.exists() for s in aged.values())  # nothing removed
    code, out, _ = run(capsys, "prune", "--older-than", "12h", "--dry-run")
    assert code == 0 and sorted(line.split()[2] for line in out.splitlines()) == sorted(
        [aged["broken"].path.name, "old"]
    )
    assert out.startswith("Would remove ")
    assert run(capsys, "prune", "--older-than", "1000w") == (0, "No session is that old.\n", "")


def test_prune_spares_a_session_in_use(
    capsys: pytest.CaptureFixture[str], aged: dict[str, SessionStore]
) -> None:
    fd, path = aged["old"].locks.register_writer()
    try:
        code, _, err = run(capsys, "prune", "--older-than", "30d")
    finally:
        aged["old"].locks.release_writer(fd, path)
    assert code == 1
    assert "old was not removed: a kernel is writing a checkpoint of old" in err
    assert aged["old"].path.exists() and not aged["broken"].path.exists()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * DAY), ("12h", 43200), ("90m", 5400), ("45s", 45), ("2w", 14 * DAY),
     ("1d12h", 1.5 * DAY), ("1.5h", 5400), (" 7D ", 7 * DAY)],
)  # fmt: skip
def test_parse_duration(text: str, seconds: float) -> None:
    assert cli.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "d", "3x", "1h 2m", "-1d", "1d-"])
def test_bad_durations_are_bad_usage(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with pytest.raises(ValueError):
        cli.parse_duration(text)
    code, _, err = run(capsys, "prune", f"--older-than={text}")
    assert code == 2 and "is not a duration" in err


def test_prune_needs_older_than(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "prune")[0] == 2


# -- every subcommand ------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [["list"], ["show", "K"], ["history", "K"], ["export", "K", "{tmp}/x.pkl"], ["rm", "K"],
     ["prune", "--older-than", "0s", "--dry-run"]],
)  # fmt: skip
def test_checkpoint_dir_reaches_every_subcommand(
    capsys: pytest.CaptureFixture[str], root: Path, tmp_path: Path, argv: list[str]
) -> None:
    elsewhere = tmp_path / "elsewhere"
    checkpoint(elsewhere, "K", {"x": 1})
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, default_out, _ = run(capsys, *argv, "--json")
    if argv[0] in ("list", "prune"):
        assert code == 0 and "elsewhere" not in default_out
    else:
        assert code == 3  # not in the default root
    code, out, _ = run(capsys, *argv, "--json", "--checkpoint-dir", str(elsewhere))
    assert code == 0
    data = json.loads(out)
    if argv[0] == "list":
        assert [row["session"] for row in data] == ["K"]
    elif argv[0] == "prune":
        assert [row["session"] for row in data["removed"]] == ["K"]
    else:
        assert data["session"] == "K"


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys)[0] == 2
    assert run(capsys, "frobnicate")[0] == 2
    assert run(capsys, "list", "--frob")[0] == 2
    assert run(capsys, "show")[0] == 2


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for line in cli.EXIT_CODES.splitlines()[1:]:
        assert line in out
        assert line in (cli.__doc__ or "")  # the module docstring says the same
    for command in ("list", "show", "history", "export", "rm", "prune", "install"):
        assert command in out
    code, out, _ = run(capsys, "export", "--help")
    assert code == 0 and "3  no such session" in out


def test_errors_are_one_sentence_on_stderr(
    capsys: pytest.CaptureFixture[str], root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_disk(root: str) -> Any:
        raise PermissionError(13, "Permission denied", "/some/dir")

    monkeypatch.setattr(cli, "list_sessions", no_disk)
    assert run(capsys, "list") == (1, "", "persistent-kernel: /some/dir: Permission denied\n")
    with pytest.raises(NoCheckpoint):
        cli.find_session(str(root), "missing")


def test_python_dash_m(jupyter_env: dict[str, Path], three: SessionStore) -> None:
    command = [sys.executable, "-m", "persistent_kernel", "history", "analysis.ipynb", "--json"]
    done = subprocess.run(
        command, cwd=jupyter_env["work"], env=os.environ, capture_output=True, text=True, check=True
    )
    assert [g["generation"] for g in json.loads(done.stdout)["generations"]] == [1, 2, 3]
    missing = subprocess.run(
        [*command[:4], "gone.ipynb"], cwd=jupyter_env["work"], env=os.environ,
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert missing.returncode == 3 and missing.stdout == ""
    assert (
        missing.stderr
        == f"persistent-kernel: there are no checkpoints of gone.ipynb in {cli.default_root()}\n"
    )


# -- one configuration for the kernel and the command line -----------------------------


@pytest.mark.parametrize("filename", ["ipython_kernel_config.py", "persistent_kernel_config.py"])
def test_the_cli_reads_the_kernel_s_checkpoint_dir(
    capsys: pytest.CaptureFixture[str],
    jupyter_env: dict[str, Path],
    tmp_path: Path,
    filename: str,
) -> None:
    configured = tmp_path / "configured"
    profile = jupyter_env["IPYTHONDIR"] / "profile_default"
    profile.mkdir(parents=True)
    (profile / filename).write_text(f"c.PersistentKernel.checkpoint_dir = {str(configured)!r}\n")
    checkpoint(configured, "K", {"x": 1})
    assert cli.default_root() == str(configured)
    code, out, _ = run(capsys, "list", "--json")
    assert code == 0 and [row["session"] for row in json.loads(out)] == ["K"]
    code, out, _ = run(capsys, "list", "--json", "--checkpoint-dir", str(tmp_path / "other"))
    assert code == 0 and json.loads(out) == []  # the flag still wins


def test_the_cli_finds_what_a_configured_kernel_wrote(
    capsys: pytest.CaptureFixture[str], jupyter_env: dict[str, Path], tmp_path: Path
) -> None:
    configured = tmp_path / "configured"
    profile = jupyter_env["IPYTHONDIR"] / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_kernel_config.py").write_text(
        f"c.PersistentKernel.checkpoint_dir = {str(configured)!r}\n"
        "c.PersistentKernel.checkpoint_interval = 0\n"
    )
    harness = KernelHarness(cwd=jupyter_env["work"], root=configured)
    try:
        kernel = harness.start()
        kernel.run("answer = 42").check()
        harness.wait_generations(harness.session(), 1)
    finally:
        harness.close()
    code, out, _ = run(capsys, "list", "--json")
    assert code == 0
    (row,) = json.loads(out)
    assert row["variables"] == ["answer"]


def test_prune_keeps_a_session_a_newer_release_still_writes(
    capsys: pytest.CaptureFixture[str], root: Path
) -> None:
    """Its newest readable generation is old, but a newer release wrote one today."""
    old = checkpoint(root, "shared", {"x": 1})
    age(old, 1, 40 * DAY)
    future_generation(old, b"written today by a newer release")
    data = cli.prune_sessions(str(root), 30 * DAY)
    assert data["removed"] == [] and old.path.is_dir()


def test_show_gives_the_type_of_what_was_not_saved(root: Path, nb: Path) -> None:
    """The restore report shows it; so does show (they must agree)."""
    session = Store(root).session(str(nb))
    reason = "cannot pickle a generator's frame"
    info = {"session": str(nb), "notebook": str(nb)}
    result = write_checkpoint(
        session, {"a": 1}, {"gen": reason}, info, keep=10, skipped_types={"gen": "generator"}
    )
    assert result.ok
    rows = {r["name"]: r for r in cli.show_session(str(root), str(nb))["variables"]}
    assert (rows["gen"]["type"], rows["gen"]["status"]) == ("generator", "skipped")
