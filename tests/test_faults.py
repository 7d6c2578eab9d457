"""The fault injector (tests/faults.py) over a checkpoint and a restore, on every backend.

For each fault (EIO, ENOSPC, EACCES, a short read) and each I/O call the
operation makes, that call fails once. Whatever it fails:

* a checkpoint either commits the new state or raises a storage error, and
  the newest generation is then exactly the old state or the new one;
* a restore either returns a report or raises a storage error (the kernel
  then starts without it and writes nothing: see test_kernel.py); what it
  loaded is exactly the values of the generation it names, and whatever of
  that generation it did not load is named in the report (the user is told);
* nothing is unpickled that was not verified: every stream handed to the
  unpickler is one the store wrote;
* once the fault is gone, the newest good state restores whole (no good
  blob was deleted or set aside, no crash marker was left behind).

What the user is told, and that a cell is never kept from its reply, is the
checkpointer's and the kernel's part: test_checkpointer.py and
test_failures_small.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from persistent_kernel import restore, serializer
from persistent_kernel.checkpoint import write_checkpoint
from persistent_kernel.errors import PersistentKernelError
from persistent_kernel.restore import RestoreReport, load_generation, restore_checkpoint
from persistent_kernel.store import SessionStore, Store, chunks

from .faults import FAULTS, Plan, inject
from .helpers import INFO, KEY
from .test_backends import kind, store  # noqa: F401 (the conformance suite's backends)
from .test_checkpointer import Rig

FIRST = {"small": {"a": 1}, "text": "x" * 5000, "arr": np.arange(300_000)}
SECOND = {"small": {"a": 2}, "text": "y" * 5000, "arr": np.arange(300_000) * 2, "new": [1]}
STORAGE_ERRORS = (OSError, PersistentKernelError)
#: The calls of a restore's walk to the newest generation.
WALK = {"generations", "read_manifest"}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunk buffers of 1 MiB and more, so that the arrays here take the chunked path
    (each chunk a blob of its own, read into place) without costing seconds a run;
    chunks not yet stored are hashed as they are written from the first one on."""
    monkeypatch.setattr(chunks, "THRESHOLD", 1 << 20)
    monkeypatch.setattr(chunks, "NEW_RUN", 0)


def same(values: dict[str, Any], expected: dict[str, Any]) -> bool:
    if values.keys() != expected.keys():
        return False
    return all(_equal(values[name], expected[name]) for name in expected)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return bool(a == b)


def checkpoint(session: SessionStore, values: dict[str, Any]) -> None:
    result = write_checkpoint(session, values, {}, INFO, keep=5, lock_timeout=10)
    assert result.saved == sorted(values) or set(result.saved) == set(values)


def fresh_session(store: Store, name: str) -> SessionStore:  # noqa: F811
    session = store.session(f"{KEY}-{name}")
    session.ensure()
    return session


@pytest.fixture
def streams(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Every pickle stream handed to the unpickler, as bytes."""
    seen: list[bytes] = []
    load = serializer.load_payload

    def recording(pickler: str, stream: Any, buffers: Any, main: Any = None) -> Any:
        seen.append(bytes(stream))
        return load(pickler, stream, buffers, main)

    monkeypatch.setattr(serializer, "load_payload", recording)
    yield seen


def calls_of(plan_fault: str, run: Any) -> int:
    """How many I/O calls *run* makes with nothing failing."""
    plan = Plan(plan_fault)
    run(plan)
    return len(plan.calls)


@pytest.mark.parametrize("fault", FAULTS)
def test_a_checkpoint_under_every_fault(store: Store, fault: str) -> None:  # noqa: F811
    def run(plan: Plan, name: str = "count") -> bool:
        session = fresh_session(store, f"{fault}-{name}")
        checkpoint(session, FIRST)
        remove = inject(session, plan)
        try:
            checkpoint(session, SECOND)
            wrote = True
        except STORAGE_ERRORS:
            wrote = False
        finally:
            remove()
        values, _ = load_generation(session)
        if wrote:
            assert same(values, SECOND), (plan, values)
        else:
            assert same(values, FIRST) or same(values, SECOND), (plan, values)
        checkpoint(session, {**SECOND, "after": 1})  # the store takes the next one
        assert same(load_generation(session)[0], {**SECOND, "after": 1}), plan
        return wrote

    total = calls_of(fault, run)
    assert total > 5
    failed = [n for n in range(1, total + 1) if not run(Plan(fault, at=n), str(n))]
    assert failed or fault == "short"  # faults were met, not only counted


@pytest.mark.parametrize("fault", FAULTS)
def test_a_restore_under_every_fault(
    store: Store,  # noqa: F811
    fault: str,
    streams: list[bytes],
) -> None:
    session = fresh_session(store, fault)
    checkpoint(session, FIRST)
    checkpoint(session, SECOND)
    clean = restore_checkpoint(session, into := {})
    assert same(into, SECOND) and not clean.skipped
    written = set(streams)  # every stream of the newest generation, as the store has it
    load_generation(session, session.generations()[0])
    written |= set(streams)
    by_generation = dict(zip(session.generations(), [FIRST, SECOND], strict=True))

    def run(plan: Plan) -> RestoreReport | None:
        into: dict[str, Any] = {}
        remove = inject(session, plan)
        try:
            report: RestoreReport | None = restore_checkpoint(session, into)
        except STORAGE_ERRORS:
            report = None
        finally:
            remove()
        if report is not None:
            expected = by_generation[report.generation] if report.generation else {}
            for name, value in into.items():
                assert _equal(value, expected[name]), (plan, name)
            untold = set(expected) - set(into) - set(report.skipped)
            assert not untold, (plan, untold)
            if report.generation != session.generations()[-1]:
                assert report.problems, plan  # why the newest was passed over
        else:
            # Only a fault in the walk itself fails the whole restore (closed: the
            # kernel starts without it and writes nothing); one in a group costs that group.
            assert plan.fired in WALK, plan
            assert not into, plan
        return report

    total = calls_of(fault, run)
    for n in range(1, total + 1):
        streams.clear()
        run(Plan(fault, at=n))
        assert set(streams) <= written  # nothing unverified was unpickled
        # once the fault is gone, the newest state restores whole
        again = restore_checkpoint(session, into := {})
        assert same(into, SECOND), (fault, n, again.skipped, again.problems)


def test_the_injector_fails_the_call_it_is_told(store: Store) -> None:  # noqa: F811
    """The injector itself: the Nth call, of the fault asked, and only that one."""
    session = fresh_session(store, "self")
    checkpoint(session, FIRST)
    plan = Plan("EIO", at=2)
    remove = inject(session, plan)
    try:
        session.generations()
        with pytest.raises(OSError, match="EIO") as caught:
            session.generations()
        session.generations()
    finally:
        remove()
    assert caught.value.errno == 5 and plan.fired == "generations" and len(plan.calls) == 3
    assert restore.restore_checkpoint(session, {}).generation == 1


@pytest.mark.parametrize("fault", ["EIO", "ENOSPC", "EACCES"])
def test_a_lasting_fault_is_told_once_and_saving_resumes(tmp_path: Path, fault: str) -> None:
    """The checkpointer over a store that fails every call from the first write on:
    cells go on, the user is told once, the previous generation stays whole, and
    saving resumes by itself once the fault is gone."""
    rig = Rig(tmp_path / "store", checkpoint_interval=0.0)
    rig.cell(x=1)
    remove = inject(rig.session, Plan(fault, at=1, lasting=True))
    try:
        for n in range(5):
            rig.cell(**{f"y{n}": n})
            rig.loop.advance(60.0)  # retries come and fail, quietly
    finally:
        remove()
    assert len(rig.host.notices) == 1, rig.host.notices
    assert "previous checkpoint is kept" in rig.host.notices[0]
    assert rig.saved() == {"x": 1}
    rig.loop.advance(60.0)
    assert rig.saved() == {"x": 1, **{f"y{n}": n for n in range(5)}}
    assert rig.host.notices[-1] == "persistent-kernel: checkpoints are being saved again."
