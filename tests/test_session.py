"""Session keys and the directory names derived from them (pure functions)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from persistent_kernel.session import (
    JUPYTER_SESSION_ENV,
    SESSION_ENV,
    resolve_session_arg,
    session_dirname,
    session_key,
)

CWD = "/home/user/project"

#: What a directory name may contain.
SAFE = re.compile(r"[A-Za-z0-9._-]+\Z")

ODD_KEYS = [
    "",
    "/",
    "///",
    ".",
    "..",
    "...",
    "/home/u/",
    "/home/u/.hidden.ipynb",
    "/home/u/a b\tc\n.ipynb",
    "/home/u/ñandú.ipynb",
    "/home/u/名前.ipynb",
    '/home/u/a:b*c?<>|".ipynb',
    "C:\\Users\\u\\nb.ipynb",
    "/home/u/\udcff\udcfe.ipynb",  # undecodable bytes from a POSIX file name
    "/home/u/" + "x" * 1000 + ".ipynb",
    "/home/u/nul",
    "some key with / slashes and spaces",
]


def test_relative_notebook_path_is_made_absolute_against_cwd() -> None:
    key, notebook = session_key({JUPYTER_SESSION_ENV: "nb/analysis.ipynb"}, CWD)
    assert key == notebook == "/home/user/project/nb/analysis.ipynb"


def test_relative_notebook_path_is_normalised() -> None:
    key, _ = session_key({JUPYTER_SESSION_ENV: "./a/../b/../analysis.ipynb"}, CWD)
    assert key == "/home/user/project/analysis.ipynb"


def test_absolute_notebook_path_ignores_cwd() -> None:
    key, notebook = session_key({JUPYTER_SESSION_ENV: "/srv/notebooks/x.ipynb"}, CWD)
    assert key == notebook == "/srv/notebooks/x.ipynb"


def test_explicit_session_overrides_notebook_path() -> None:
    environ = {SESSION_ENV: "my-session", JUPYTER_SESSION_ENV: "x.ipynb"}
    key, notebook = session_key(environ, CWD)
    assert key == "my-session"
    assert notebook == "/home/user/project/x.ipynb"


def test_explicit_session_without_notebook() -> None:
    assert session_key({SESSION_ENV: "k"}, CWD) == ("k", None)


def test_fallback_is_cwd() -> None:
    assert session_key({}, CWD + "/sub/..") == (CWD, None)


def test_empty_variables_count_as_unset() -> None:
    assert session_key({SESSION_ENV: "", JUPYTER_SESSION_ENV: ""}, CWD) == (CWD, None)


def test_two_notebooks_in_one_folder_get_different_directories() -> None:
    a, _ = session_key({JUPYTER_SESSION_ENV: "a.ipynb"}, CWD)
    b, _ = session_key({JUPYTER_SESSION_ENV: "b.ipynb"}, CWD)
    assert session_dirname(a) != session_dirname(b)


def test_same_file_name_in_two_folders_gets_different_directories() -> None:
    assert session_dirname("/x/nb.ipynb") != session_dirname("/y/nb.ipynb")


def test_keys_that_slugify_alike_stay_distinct() -> None:
    names = {session_dirname(k) for k in ("/p/a b", "/p/a_b", "/p/a?b", "/p/a  b")}
    assert len(names) == 4


def test_dirname_is_stable_and_readable() -> None:
    name = session_dirname("/home/u/My Analysis.ipynb")
    assert name == session_dirname("/home/u/My Analysis.ipynb")
    assert name.startswith("My_Analysis.ipynb-")


@pytest.mark.parametrize("key", ODD_KEYS, ids=range(len(ODD_KEYS)))
def test_dirname_is_filesystem_safe(key: str, tmp_path: Path) -> None:
    """Odd keys give short, ASCII, non-hidden names that can really be created."""
    name = session_dirname(key)
    assert SAFE.match(name), name
    assert not name.startswith(".")
    assert len(name.encode()) <= 100
    (tmp_path / name).mkdir()


def test_odd_keys_do_not_collide() -> None:
    names = [session_dirname(k) for k in ODD_KEYS]
    assert len(set(names)) == len(names)


def test_resolve_session_arg_existing_path_is_made_absolute(tmp_path: Path) -> None:
    nb = str(tmp_path / "nb.ipynb")
    with open(nb, "w"):
        pass
    assert resolve_session_arg("nb.ipynb", str(tmp_path)) == nb


def test_resolve_session_arg_other_text_is_a_key(tmp_path: Path) -> None:
    assert resolve_session_arg("not-a-file", str(tmp_path)) == "not-a-file"
