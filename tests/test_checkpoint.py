"""write_checkpoint / restore_checkpoint: the serializer and the store together."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from persistent_kernel.checkpoint import CheckpointResult, write_checkpoint
from persistent_kernel.errors import NoSuchVariable, PagesLost
from persistent_kernel.restore import (
    RestoreReport,
    load_generation,
    preload,
    restore_checkpoint,
)
from persistent_kernel.store import SessionStore

from .helpers import INFO, flip_a_bit, largest_blob_of

MB = 1 << 20


def write(
    session: SessionStore,
    values: dict[str, Any],
    skipped: dict[str, str] | None = None,
    keep: int = 10,
) -> CheckpointResult:
    result = write_checkpoint(session, values, skipped or {}, INFO, keep=keep)
    assert result.ok
    return result


def restore(session: SessionStore) -> tuple[dict[str, Any], RestoreReport]:
    into: dict[str, Any] = {}
    return into, restore_checkpoint(session, into)


BLOB_DAMAGE: dict[str, Callable[[Path], None]] = {
    "flipped bit": flip_a_bit,
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:-3]),
    "missing": Path.unlink,
}

#: Tags of the Tracked objects unpickled so far: proof of what was loaded.
LOADS: list[str] = []


def _record_load(tag: str) -> Tracked:
    LOADS.append(tag)
    return Tracked(tag)


class Tracked:
    """An object that logs every time it is unpickled."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __reduce__(self) -> Any:
        return _record_load, (self.tag,)


@pytest.fixture
def loads() -> list[str]:
    LOADS.clear()
    return LOADS


@pytest.fixture
def fly_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A module created on the fly, importable until a test removes it."""
    module = types.ModuleType("pk_test_fly_module")
    exec("class Gone:\n    def __init__(self, v):\n        self.v = v\n", module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


# -- round trip ------------------------------------------------------------------------


def sample_state() -> dict[str, Any]:
    shared = [1, 2, 3]
    return {
        "n": 42,
        "text": "héllo",
        "shared": shared,
        "holder": {"inner": shared},
        "arr": np.arange(1000, dtype=np.float32).reshape(10, 100),
        "df": pd.DataFrame({"a": range(5), "b": list("abcde")}),
        "np": np,
        "nothing": None,
    }


def test_round_trip_into_a_fresh_dict(session: SessionStore) -> None:
    def gen() -> Any:
        yield 1

    state = sample_state()
    already_skipped = {"fh": "open file: reopening it on restore could truncate it"}
    result = write(session, {**state, "gen": gen()}, already_skipped)
    assert result.generation == 1
    assert not result.unchanged
    assert result.saved == sorted(state)
    assert set(result.skipped) == {"fh", "gen"}
    assert result.written == result.size > 0

    into, report = restore(session)
    assert report.generation == 1
    assert report.created == result.created
    assert report.size == result.size
    assert report.problems == []
    assert report.restored == sorted(state)
    assert set(into) == set(state)
    assert set(report.skipped) == {"fh", "gen"}
    assert all(reason.startswith("not saved: ") for reason in report.skipped.values())
    assert "truncate" in report.skipped["fh"]

    for name in ("n", "text", "shared", "holder", "nothing"):
        assert into[name] == state[name]
    assert into["holder"]["inner"] is into["shared"]
    np.testing.assert_array_equal(into["arr"], state["arr"])
    assert into["arr"].flags.writeable
    pd.testing.assert_frame_equal(into["df"], state["df"])
    assert into["np"] is np


def test_result_is_plain_data(session: SessionStore) -> None:
    result = write(session, {"a": [1]})
    again = CheckpointResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result
    assert CheckpointResult.from_dict({"ok": False, "unknown_field": 1}).ok is False


def test_empty_namespace_makes_no_first_generation(session: SessionStore) -> None:
    result = write(session, {})
    assert result.generation is None
    assert session.generations() == []


def test_no_checkpoint_restores_nothing(session: SessionStore) -> None:
    into, report = restore(session)
    assert into == {}
    assert report.generation is None
    assert report.problems == []


# -- what is written ---------------------------------------------------------------------


def test_identical_state_commits_nothing(session: SessionStore) -> None:
    """Equal (not identical) values a second time: no new generation, nothing written."""
    first = write(session, sample_state())
    second = write(session, sample_state())
    assert second.unchanged
    assert second.generation == first.generation == 1
    assert second.written == 0
    assert second.size == first.size
    assert session.generations() == [1]

    third = write(session, {**sample_state(), "n": 43})
    assert not third.unchanged
    assert third.generation == 2
    assert session.generations() == [1, 2]


def test_a_refusal_before_the_commit_commits_nothing(session: SessionStore) -> None:
    """A forked writer whose page server ended (see lazypages) refuses to commit:
    the newest generation stays the one before, and restores as it was."""
    write(session, sample_state())

    def refuse() -> None:
        raise PagesLost("the arrays read may hold zeros")

    with pytest.raises(PagesLost):
        write_checkpoint(session, {**sample_state(), "n": 44}, {}, INFO, keep=5,
                         before_commit=refuse)  # fmt: skip
    assert session.generations() == [1]
    into: dict[str, Any] = {}
    restore_checkpoint(session, into)
    assert into["n"] == sample_state()["n"]
    seen: list[bool] = []
    write_checkpoint(session, {**sample_state(), "n": 44}, {}, INFO, keep=5,
                     before_commit=lambda: seen.append(True))  # fmt: skip
    assert seen == [True] and session.generations() == [1, 2]


def test_small_change_next_to_a_big_array_writes_little(session: SessionStore) -> None:
    big = np.random.default_rng(0).random(20 * MB // 8)
    first = write(session, {"big": big, "small": [1, 2]})
    assert first.written >= big.nbytes

    second = write(session, {"big": big, "small": [1, 2, 3]})
    assert second.generation == 2
    assert second.size >= big.nbytes
    assert second.written < 64 * 1024

    into, _ = restore(session)
    assert into["small"] == [1, 2, 3]
    np.testing.assert_array_equal(into["big"], big)


def test_old_generations_are_pruned(session: SessionStore) -> None:
    for i in range(4):
        write(session, {"i": i}, keep=2)
    assert session.generations() == [3, 4]
    assert len(list(session.objects_dir.iterdir())) == 2
    into, _ = restore(session)
    assert into == {"i": 3}


# -- damage -----------------------------------------------------------------------------


@pytest.mark.parametrize("damage", BLOB_DAMAGE.values(), ids=BLOB_DAMAGE.keys())
def test_damaged_blob_falls_back_without_unpickling(
    session: SessionStore, loads: list[str], damage: Callable[[Path], None]
) -> None:
    """Every blob is checked before any is unpickled.

    Generation 2's first group (a Tracked object) is intact, its second is
    damaged: the restore must pass over generation 2 without running the
    intact group's unpickling code, then load generation 1.
    """
    write(session, {"t": Tracked("gen1"), "a": [1]})
    write(session, {"t": Tracked("gen2"), "a": [2]})
    damage(largest_blob_of(session, "a", generation=2))

    into, report = restore(session)
    assert loads == ["gen1"]
    assert report.generation == 1
    assert into["a"] == [1]
    assert into["t"].tag == "gen1"
    assert len(report.problems) == 1
    assert "generation 2" in report.problems[0]


def test_damaged_manifest_falls_back(session: SessionStore, loads: list[str]) -> None:
    write(session, {"t": Tracked("gen1")})
    write(session, {"t": Tracked("gen2")})
    session.manifest_path(2).write_bytes(b'{"format": 1, "trunc')
    into, report = restore(session)
    assert loads == ["gen1"]
    assert report.generation == 1
    assert into["t"].tag == "gen1"
    assert len(report.problems) == 1
    assert "generation 2" in report.problems[0]


def test_every_generation_damaged(session: SessionStore) -> None:
    write(session, {"a": [1]})
    write(session, {"a": [2]})
    for generation in (1, 2):
        largest_blob_of(session, "a", generation).unlink()
    into, report = restore(session)
    assert into == {}
    # both passed over; then what is left of the newest (nothing) is reported
    assert report.generation == 2 and "damaged" in report.skipped["a"]
    assert len(report.problems) == 3 and "no generation was intact" in report.problems[-1]


def test_group_that_fails_to_unpickle_skips_only_its_names(
    session: SessionStore, fly_module: types.ModuleType
) -> None:
    """A valid blob whose pickle raises on load: its class vanished since."""
    bad = fly_module.Gone(1)
    write(session, {"bad": bad, "bad_too": [bad], "good": [1, 2], "other": {"x": 1}})
    del fly_module.Gone

    into, report = restore(session)
    assert into == {"good": [1, 2], "other": {"x": 1}}
    assert report.restored == ["good", "other"]
    assert set(report.skipped) == {"bad", "bad_too"}
    assert all("could not be loaded" in reason for reason in report.skipped.values())
    assert report.problems == []
    assert report.generation == 1


def test_module_that_cannot_be_imported_is_skipped(
    session: SessionStore, fly_module: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(session, {"mod": fly_module, "x": 1})
    monkeypatch.delitem(sys.modules, fly_module.__name__)
    into, report = restore(session)
    assert into == {"x": 1}
    assert "could not be imported" in report.skipped["mod"]


@pytest.mark.parametrize("damage", BLOB_DAMAGE.values(), ids=BLOB_DAMAGE.keys())
def test_checkpoint_after_blob_damage_is_restorable(
    session: SessionStore, damage: Callable[[Path], None]
) -> None:
    """A checkpoint that reports success can be restored, even if a blob it
    would reuse was damaged on disk since it was first written."""
    write(session, {"a": [1, 2, 3], "b": "kept"})
    damage(largest_blob_of(session, "a"))

    result = write(session, {"a": [1, 2, 3], "b": "kept"})

    into, report = restore(session)
    assert report.generation == result.generation
    assert into == {"a": [1, 2, 3], "b": "kept"}


def test_damaged_large_blob_is_quarantined_and_rewritten(session: SessionStore) -> None:
    """Large blobs are reused on trust (name and size); one found damaged at
    restore is moved aside, so the next checkpoint writes it again."""
    big = np.arange(2 * MB // 8, dtype=np.int64)
    write(session, {"big": big, "small": 1})
    flip_a_bit(largest_blob_of(session, "big"))

    into, report = restore(session)
    # no generation is whole: what is intact in the newest comes back
    assert "does not match its hash" in report.problems[0]
    assert "no generation was intact" in report.problems[-1]
    assert into == {"small": 1} and "damaged" in report.skipped["big"]

    result = write(session, {"big": big, "small": 1})
    assert result.written >= big.nbytes
    into, report = restore(session)
    assert report.generation == result.generation
    assert np.array_equal(into["big"], big) and into["small"] == 1


def test_groups_that_did_not_load_are_carried_forward(
    session: SessionStore, fly_module: types.ModuleType
) -> None:
    """A variable whose class is missing here is not lost by the next checkpoint:
    it is kept byte for byte until its name is assigned again."""
    write(session, {"obj": fly_module.Gone(7), "x": 1})
    gone = fly_module.Gone
    del fly_module.Gone
    into, report = restore(session)
    assert into == {"x": 1} and [g.record["names"] for g in report.carried] == [["obj"]]

    result = write_checkpoint(session, {"x": 2}, {}, INFO, keep=10, carried=report.carried)
    assert "obj" in result.saved and result.written < 100
    fly_module.Gone = gone  # the class is back (the package was installed again)
    into, report = restore(session)
    assert into["x"] == 2 and into["obj"].v == 7 and report.carried == []

    # assigning the name again drops the carried bytes in favour of the new value
    del fly_module.Gone
    _, report = restore(session)
    fresh = write_checkpoint(session, {"obj": "new"}, {}, INFO, keep=10, carried=report.carried)
    assert fresh.ok
    fly_module.Gone = gone
    assert restore(session)[0] == {"obj": "new"}


def test_manifest_records_versions_and_a_restore_names_changes(session: SessionStore) -> None:
    from persistent_kernel.restore import version_changes

    write(session, {"df": pd.DataFrame({"a": [1]}), "arr": np.zeros(3), "n": 1})
    manifest, _ = session.latest()
    assert manifest.content["packages"] == {"numpy": np.__version__, "pandas": pd.__version__}
    assert manifest.raw["python"] == ".".join(map(str, sys.version_info[:3]))
    assert version_changes(manifest) == []

    manifest.raw["python"] = "3.0.1"
    manifest.content["packages"] = {"pandas": "0.1.0", "pk_not_installed_pkg": "1.0"}
    changes = version_changes(manifest)
    assert f"python 3.0.1 (now {manifest.raw['python'] and sys.version.split()[0]})" in changes
    assert f"pandas 0.1.0 (now {pd.__version__})" in changes
    assert "pk_not_installed_pkg 1.0 (now not installed)" in changes


def test_changing_one_array_in_a_list_rewrites_that_array_only(session: SessionStore) -> None:
    """Each out-of-band buffer is its own blob: one changed block of four costs one block."""
    blocks = [np.full(MB // 8 * 4, i, dtype=np.float64) for i in range(4)]  # 4 x 4 MiB
    first = write(session, {"blocks": blocks})
    assert first.written >= 16 * MB
    blocks[2] = blocks[2] + 10
    second = write(session, {"blocks": blocks})
    assert 4 * MB <= second.written < 5 * MB
    into, _ = restore(session)
    assert [float(b[0]) for b in into["blocks"]] == [0.0, 1.0, 12.0, 3.0]


def test_asking_for_a_variable_a_generation_never_held_names_it(session: SessionStore) -> None:
    write(session, {"a": 1})
    with pytest.raises(NoSuchVariable, match="has no variable nope"):
        load_generation(session, None, ["a", "nope"])


# -- loading ahead of a writer -----------------------------------------------------------


def test_a_restore_takes_unchanged_groups_from_a_preload(
    session: SessionStore, loads: list[str]
) -> None:
    """What a kernel does when it starts while the last writer still runs: the
    older generation is unpickled meanwhile, and the restore of the newest one
    unpickles again only what changed, drops what was deleted, and brings
    back exactly the newest state."""
    big = np.arange(1 << 20, dtype=np.float64)
    write(session, {"big": big, "same": Tracked("same"), "changes": Tracked("old"), "gone": 1})
    early = preload(session, "k")
    assert early.generation == 1 and len(early) == 4 and loads == ["same", "old"]

    big[7] = -1.0  # changed in place: a different buffer, its group must be read again
    write(session, {"big": big, "same": Tracked("same"), "changes": Tracked("new")})
    loads.clear()
    into: dict[str, Any] = {}
    report = restore_checkpoint(session, into, reuse=early)

    assert report.generation == 2
    assert sorted(into) == ["big", "changes", "same"]  # "gone" was deleted since
    assert into["big"][7] == -1.0 and into["changes"].tag == "new"
    assert loads == ["new"]  # "same" came from the preload, unpickled once in all
    assert report.reused == ["same"]
    assert report.restored == ["big", "changes", "same"]


def test_a_preload_of_the_newest_generation_leaves_nothing_to_read(
    session: SessionStore, loads: list[str]
) -> None:
    """The writer found nothing changed (no new generation): nothing is read twice."""
    write(session, {"a": Tracked("a"), "b": [1, 2, 3]})
    early = preload(session, "k")
    loads.clear()
    blobs = [p for p in session.objects_dir.rglob("*") if p.is_file()]
    assert blobs
    for blob in blobs:
        blob.unlink()  # a read would fail now: proof that nothing is read
    into: dict[str, Any] = {}
    report = restore_checkpoint(session, into, reuse=early)
    assert into["b"] == [1, 2, 3] and into["a"].tag == "a" and loads == []
    assert report.reused == ["a", "b"] and report.problems == []


def test_a_preload_leaves_out_what_fails_and_the_restore_says_why(
    session: SessionStore, fly_module: types.ModuleType
) -> None:
    write(session, {"bad": fly_module.Gone(1), "good": [1]})
    del fly_module.Gone
    early = preload(session, "k")
    assert len(early) == 1
    into: dict[str, Any] = {}
    report = restore_checkpoint(session, into, reuse=early)
    assert into == {"good": [1]} and report.reused == ["good"]
    assert "could not be loaded" in report.skipped["bad"]


def test_a_preload_of_a_damaged_generation_falls_back_like_a_restore(
    session: SessionStore, loads: list[str]
) -> None:
    write(session, {"a": Tracked("one")})
    write(session, {"a": Tracked("two")})
    flip_a_bit(largest_blob_of(session, "a"))
    early = preload(session, "k")
    assert early.generation == 1 and loads == ["one"]
    into: dict[str, Any] = {}
    report = restore_checkpoint(session, into, reuse=early)
    # Its preloaded value was let go when generation 2 was about to be read, before
    # that read failed: generation 1 is read again, and restored all the same.
    assert into["a"].tag == "one" and report.generation == 1 and report.reused == []
    assert "generation 2 was passed over" in report.problems[0]


#: What happened to Freed objects, in order: proof of when a value was let go.
EVENTS: list[str] = []


def _made(tag: str) -> Freed:
    EVENTS.append(f"loaded {tag}")
    return Freed(tag)


class Freed:
    """Logs its unpickling and its end."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __reduce__(self) -> Any:
        return _made, (self.tag,)

    def __del__(self) -> None:
        EVENTS.append(f"freed {self.tag}")


def test_a_restore_lets_go_of_replaced_preloaded_values_before_loading_new_ones(
    session: SessionStore,
) -> None:
    """The machine must not hold a changed variable twice over (its old value,
    loaded ahead, and its new one): the old one goes before the new one is read."""
    write(session, {"big": Freed("old"), "same": [1, 2]})
    early = preload(session, "k")
    write(session, {"big": Freed("new"), "same": [1, 2]})
    EVENTS.clear()
    into: dict[str, Any] = {}
    report = restore_checkpoint(session, into, reuse=early)
    assert into["big"].tag == "new" and report.reused == ["same"]
    assert EVENTS.index("freed old") < EVENTS.index("loaded new"), EVENTS


def test_a_checkpoint_reports_how_far_it_is(session: SessionStore) -> None:
    """After each part it stores: bytes so far and in all, ending at all of them."""
    seen: list[tuple[int, int]] = []
    values = {"a": np.arange(8 << 20), "b": [1, 2, 3]}  # 64 MiB: chunks of 2 MiB
    write_checkpoint(session, values, {}, INFO, keep=5, on_bytes=lambda d, t: seen.append((d, t)))
    totals = {total for _, total in seen}
    assert len(totals) == 1 and (total := totals.pop()) >= 64 << 20
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == total
    assert len(seen) >= 32  # chunk by chunk, not one jump per array
