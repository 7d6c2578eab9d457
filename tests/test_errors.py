"""The error hierarchy: each error is raised somewhere, and each reads as one sentence."""

from __future__ import annotations

import errno
import inspect
from pathlib import Path

import pytest

import persistent_kernel
from persistent_kernel import errors

PACKAGE = Path(persistent_kernel.__file__).parent
#: Bases that are caught, never raised themselves.
BASES = {"PersistentKernelError", "UnreadableCheckpoint"}


@pytest.mark.parametrize(
    "name",
    sorted(
        name
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.PersistentKernelError) and name not in BASES
    ),
)
def test_every_error_is_raised_somewhere(name: str) -> None:
    sources = [p for p in PACKAGE.rglob("*.py") if p.name != "errors.py"]
    assert any(f"{name}(" in p.read_text() for p in sources), f"{name} is never raised"


def test_one_sentence_for_any_error() -> None:
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "/no/such/x.pkl")
    assert errors.sentence(missing) == "/no/such/x.pkl: No such file or directory"
    assert errors.sentence(errors.NoCheckpoint("nothing here\nmore")) == "nothing here"
    assert errors.sentence(ValueError()) == "ValueError"
    untrusted = errors.UntrustedCheckpoint("a file is not yours")  # a PermissionError too
    assert errors.sentence(untrusted) == "a file is not yours"
