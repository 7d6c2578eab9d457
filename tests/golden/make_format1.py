"""Make the format-1 golden checkpoints in ``tests/golden/format1``.

Run once, with the release that wrote format 1 (persistent-kernel 0.1, whose
manifests name blobs by xxh3-128)::

    python tests/golden/make_format1.py

Later releases must keep loading what it wrote (``tests/test_golden.py``);
this script is kept to say exactly what the files hold, not to be re-run.
The files are small on purpose: a few hundred bytes of state.

The storage root holds its own secret (``secret``): the manifests are signed
with it, as a user's are with theirs. The test copies the root into a temp
folder and makes it private (git does not keep modes) before reading it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from persistent_kernel.checkpoint import write_checkpoint
from persistent_kernel.store import Store

ROOT = Path(__file__).resolve().parent / "format1"
KEY = "/golden/notebook.ipynb"
INFO = {"session": KEY, "notebook": KEY}


def first() -> dict[str, object]:
    shared = [1, 2, 3]
    return {
        "numbers": list(range(10)),
        "text": "caf\u00e9",
        "table": {"a": shared, "nested": {"b": (1.5, None, True)}},
        "alias": shared,  # shares an object with table: stored in one group
        "array": np.arange(12, dtype=np.float64).reshape(3, 4),  # an out-of-band buffer
        "codec": json,  # a module bound to a name: saved by name
    }


def main() -> None:
    if ROOT.exists():
        shutil.rmtree(ROOT)
    session = Store(ROOT).session(KEY)
    values = first()
    skipped = {"password": "excluded by %persist exclude"}
    assert write_checkpoint(session, values, skipped, INFO, keep=10).ok
    values["text"] = "second"
    assert write_checkpoint(session, values, skipped, INFO, keep=10).ok
    for leftover in ("lock", "writers"):
        path = session.path / leftover
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    print(f"wrote {ROOT} with Python {sys.version.split()[0]}", file=sys.stderr)


if __name__ == "__main__":
    main()
