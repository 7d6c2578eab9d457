"""namespace.select(): which names of a user namespace are saved."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from persistent_kernel import namespace
from persistent_kernel.namespace import select

INTERNALS = [
    "In", "Out", "_", "__", "___", "_i", "_ii", "_iii", "_i3", "_3", "_i12", "_45",
    "_oh", "_ih", "_dh", "get_ipython", "exit", "quit", "__builtins__", "__name__",
    "__warningregistry__",
]  # fmt: skip

KERNEL_MODULES = [
    "ipykernel.zmqshell",
    "IPython.core.interactiveshell",
    "zmq.sugar.socket",
    "tornado.ioloop",
    "jupyter_client.session",
]


def object_of_module(module: str) -> Any:
    """An instance of a class that claims to live in *module*."""
    cls = type("Thing", (), {"__module__": module})
    return cls()


def test_ipython_internals_are_dropped_silently() -> None:
    ns = {name: object() for name in INTERNALS}
    ns["data"] = [1, 2]
    to_save, skipped = select(ns, hidden={})
    assert to_save == {"data": [1, 2]}
    assert skipped == {}


@pytest.mark.parametrize("name", ["_cache", "_index", "_x", "_i_am_user", "__private", "_3d"])
def test_underscore_user_names_are_kept(name: str) -> None:
    to_save, skipped = select({name: 1}, hidden={})
    assert to_save == {name: 1}
    assert skipped == {}


def test_hidden_names_are_dropped_only_while_unchanged() -> None:
    """A name IPython hid is dropped while bound to the very object it hid."""
    injected = object()
    hidden = {"np": injected, "helper": injected}
    user_ns = {"np": injected, "helper": object()}
    to_save, skipped = select(user_ns, hidden)
    assert list(to_save) == ["helper"]
    assert to_save["helper"] is user_ns["helper"]
    assert skipped == {}


def test_hidden_identity_not_equality() -> None:
    """An equal but distinct object under a hidden name is the user's."""
    hidden = {"x": [1, 2]}
    to_save, _ = select({"x": [1, 2]}, hidden)
    assert "x" in to_save


@pytest.mark.parametrize("module", KERNEL_MODULES)
def test_kernel_owned_objects_are_dropped(module: str) -> None:
    to_save, skipped = select({"obj": object_of_module(module), "keep": 1}, hidden={})
    assert to_save == {"keep": 1}
    assert skipped == {}


@pytest.mark.parametrize("module", ["zmqfoo", "ipykernel_helpers.x", "mylib.IPython"])
def test_lookalike_packages_are_not_kernel_owned(module: str) -> None:
    obj = object_of_module(module)
    to_save, _ = select({"obj": obj}, hidden={})
    assert to_save == {"obj": obj}


def test_imported_kernel_modules_are_kept() -> None:
    """``import zmq`` is the user's: it is re-imported on restore."""
    import zmq

    to_save, _ = select({"zmq": zmq}, hidden={})
    assert to_save == {"zmq": zmq}


def test_exclude_globs_put_names_in_skipped() -> None:
    ns = {"df_raw": 1, "df_clean": 2, "model": 3, "secret_key": 4, "DF_upper": 5}
    to_save, skipped = select(ns, hidden={}, exclude=["df_*", "secret_?ey"])
    assert to_save == {"model": 3, "DF_upper": 5}
    assert set(skipped) == {"df_raw", "df_clean", "secret_key"}
    assert all("exclude" in reason for reason in skipped.values())


def test_exclude_does_not_report_internals() -> None:
    _, skipped = select({"_i3": "x = 1", "_": 5}, hidden={}, exclude=["_*"])
    assert skipped == {}


def test_open_files_are_skipped_with_a_reason(tmp_path: Path) -> None:
    with open(tmp_path / "out.txt", "w") as text, open(tmp_path / "out.bin", "wb") as binary:
        to_save, skipped = select({"text": text, "binary": binary, "n": 1}, hidden={})
    assert to_save == {"n": 1}
    assert set(skipped) == {"text", "binary"}
    assert all("file" in reason for reason in skipped.values())


def test_files_open_for_reading_and_locks_are_left_to_the_serializer(tmp_path: Path) -> None:
    """They come back re-opened and unlocked (persistent_kernel.reducers)."""
    (tmp_path / "in.txt").write_text("x")
    with open(tmp_path / "in.txt") as reader:
        values = {"reader": reader, "lock": threading.Lock(), "event": threading.Event()}
        to_save, skipped = select(values, hidden={})
    assert to_save == values and skipped == {}


def test_threads_are_skipped_with_a_reason() -> None:
    to_save, skipped = select({"worker": threading.Thread(), "n": 1}, hidden={})
    assert to_save == {"n": 1}
    assert list(skipped) == ["worker"] and "thread" in skipped["worker"]


def test_select_does_not_mutate_its_input() -> None:
    ns = {"a": 1, "_": 2, "In": []}
    select(ns, hidden={"a": 1}, exclude=["a"])
    assert ns == {"a": 1, "_": 2, "In": []}


def test_last_assignments_finds_the_newest_cell_binding_each_name() -> None:
    from persistent_kernel.namespace import bound_names, last_assignments

    cell = "import numpy as np\nfor i in range(3):\n    y = i\ndef f():\n    z = 2\n[q for q in x]"
    assert bound_names(cell) == {"np", "i", "y", "f"}
    assert bound_names("x = (") == set()  # does not parse: binds nothing
    inputs = ["", "a = 1", "b = a", "a = 2\nc = 3", "print(a)"]
    assert last_assignments(inputs, ["a", "b", "c", "d"]) == {
        "a": "a = 2\nc = 3",
        "b": "b = a",
        "c": "a = 2\nc = 3",
    }
    huge = "b = " + repr("x" * 70_000)  # too long to keep: b gets no cell, not an older one
    assert last_assignments([*inputs, huge], ["b"]) == {}


@pytest.mark.parametrize(
    ("source", "only"),
    [
        ("pass", True),
        ("df", True),
        ("'a note'\n42\nx", True),
        ("", True),
        ("x = 1", False),
        ("df.shape", False),  # a property runs code
        ("print(x)", False),
        ("x += 1", False),
        ("%who", False),  # a magic is not Python: it may do anything
        ("del x", False),
    ],
)
def test_a_cell_that_only_looks_changes_nothing(source: str, only: bool) -> None:
    assert namespace.looks_only(source) is only
