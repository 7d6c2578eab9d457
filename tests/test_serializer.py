"""serializer.serialize(): a namespace cut into independently pickled groups."""

from __future__ import annotations

import collections
import json
import math
import os
import os.path
import pickle
import socket
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from persistent_kernel.serializer import Payload, Serialized, load_payload, serialize


def group_names(ser: Serialized) -> list[set[str]]:
    return [set(p.names) for p in ser.payloads]


def payload_of(ser: Serialized, name: str) -> Payload:
    (payload,) = [p for p in ser.payloads if name in p.names]
    return payload


def load(payload: Payload) -> dict[str, Any]:
    """Unpickle *payload* the way a restore does: buffers copied into bytearrays."""
    return load_payload(
        payload.pickler, payload.data, [bytearray(b.raw()) for b in payload.buffers]
    )


def load_all(ser: Serialized) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for payload in ser.payloads:
        out.update(load(payload))
    return out


def dump_payloads(ser: Serialized, path: Path) -> None:
    """Write *ser*'s payloads as plain bytes, for another process to load."""
    plain = [
        (p.names, p.pickler, bytes(p.data), [bytes(b.raw()) for b in p.buffers])
        for p in ser.payloads
    ]
    path.write_bytes(pickle.dumps(plain))


def run_python(script: str, *args: str, cwd: Path) -> Any:
    """Run *script* in a fresh interpreter as ``__main__``; return its JSON stdout."""
    path = cwd / f"script_{abs(hash(script))}.py"
    path.write_text(textwrap.dedent(script))
    proc = subprocess.run(
        [sys.executable, str(path), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


#: Loads payloads written by dump_payloads into this process's ``__main__``.
LOAD_INTO_MAIN = """
    import pickle, sys
    from persistent_kernel.serializer import load_payload
    with open(sys.argv[1], "rb") as f:
        plain = pickle.load(f)
    for names, pickler, data, buffers in plain:
        globals().update(load_payload(pickler, data, [bytearray(b) for b in buffers]))
"""


# -- sharing --------------------------------------------------------------------------


def test_variables_sharing_a_list_are_pickled_together() -> None:
    l1 = [1, 2]
    ns = {"l1": l1, "l2": l1, "d": {"k": l1}, "equal_copy": [1, 2], "n": 5}
    ser = serialize(ns)
    assert sorted(map(sorted, group_names(ser))) == [["d", "l1", "l2"], ["equal_copy"], ["n"]]
    restored = load(payload_of(ser, "l1"))
    assert restored["l1"] == [1, 2]
    assert restored["l2"] is restored["l1"]
    assert restored["d"]["k"] is restored["l1"]


def test_sharing_is_transitive() -> None:
    """a shares with b, b with c: all three are one group."""
    x, y = [1], [2]
    ser = serialize({"a": [x], "b": [x, y], "c": {"y": y}, "z": [3]})
    assert sorted(map(sorted, group_names(ser))) == [["a", "b", "c"], ["z"]]
    restored = load(payload_of(ser, "a"))
    assert restored["a"][0] is restored["b"][0]
    assert restored["b"][1] is restored["c"]["y"]


def test_unrelated_variables_are_separate_payloads() -> None:
    ns = {"a": [1], "b": {"x": 1}, "c": "text", "d": (1, 2), "e": {1, 2}, "f": 3.5}
    ser = serialize(ns)
    assert sorted(map(sorted, group_names(ser))) == [[n] for n in sorted(ns)]
    assert load_all(ser) == ns


def test_shared_immutables_are_not_sharing() -> None:
    """Identity of strings, tuples, numbers carries no meaning: no grouping."""
    text = "some string " * 10
    pair = ("a", 1)
    ser = serialize({"s1": text, "s2": text, "t1": pair, "t2": pair, "big": 10**30})
    assert len(ser.payloads) == 5


def test_shared_imported_classes_and_functions_are_not_sharing() -> None:
    ns = {
        "od1": collections.OrderedDict(a=1),
        "od2": collections.OrderedDict(b=2),
        "join1": os.path.join,
        "join2": os.path.join,
    }
    ser = serialize(ns)
    assert len(ser.payloads) == 4
    assert load_all(ser) == ns


# -- what cannot be pickled -------------------------------------------------------------


class RaisesOnReduce:
    def __reduce__(self) -> Any:
        raise RuntimeError("refusing to be pickled")


def deeply_nested(depth: int) -> list[Any]:
    outer: list[Any] = []
    current = outer
    for _ in range(depth):
        inner: list[Any] = []
        current.append(inner)
        current = inner
    return outer


@pytest.fixture
def unpicklables() -> Iterator[dict[str, Any]]:
    """One of each kind of value that cannot be pickled, closed afterwards."""

    def gen() -> Iterator[int]:
        yield 1

    with socket.socket() as sock, closing(sqlite3.connect(":memory:")) as conn:
        yield {
            "gen": gen(),
            "sock": sock,
            "conn": conn,
            "raiser": RaisesOnReduce(),
            "deep": deeply_nested(100_000),
        }


EXPECTED_REASON = {
    "gen": "generator",
    "sock": "socket",
    "conn": "in-memory sqlite3 database",
    "raiser": "refusing to be pickled",
    "deep": "deeply nested",
}


def test_unpicklable_values_are_skipped_and_the_rest_saved(unpicklables: dict[str, Any]) -> None:
    good = {"before": [1, 2, 3], "after": {"k": "v"}, "arr": np.arange(4)}
    ns = {"before": good["before"], **unpicklables, "after": good["after"], "arr": good["arr"]}
    ser = serialize(ns)
    assert set(ser.skipped) == set(unpicklables)
    for name, fragment in EXPECTED_REASON.items():
        assert fragment in ser.skipped[name], (name, ser.skipped[name])
    restored = load_all(ser)
    assert set(restored) == set(good)
    assert restored["before"] == good["before"]
    assert restored["after"] == good["after"]
    np.testing.assert_array_equal(restored["arr"], good["arr"])


@pytest.mark.parametrize("name", sorted(EXPECTED_REASON))
def test_each_unpicklable_alone_is_skipped(name: str, unpicklables: dict[str, Any]) -> None:
    ser = serialize({name: unpicklables[name], "ok": 1})
    assert list(ser.skipped) == [name]
    assert EXPECTED_REASON[name] in ser.skipped[name]
    assert load_all(ser) == {"ok": 1}


# -- modules and types --------------------------------------------------------------------


def test_modules_bound_to_names_are_recorded_not_pickled() -> None:
    """``import numpy as np``, ``import os.path as osp``: recorded by module name."""
    ser = serialize({"np": np, "osp": os.path, "coll": collections, "x": 1})
    assert ser.modules == {"np": "numpy", "osp": os.path.__name__, "coll": "collections"}
    assert group_names(ser) == [{"x"}]
    assert ser.types["np"] == "module"


def test_types_are_recorded() -> None:
    ser = serialize(
        {"x": 1, "df": pd.DataFrame({"a": [1]}), "arr": np.zeros(2), "o": RaisesOnReduce()}
    )
    assert ser.types["x"] == "int"
    assert ser.types["arr"] == "numpy.ndarray"
    assert ser.types["df"].startswith("pandas.")
    assert ser.types["df"].endswith(".DataFrame")
    assert ser.types["o"] == f"{__name__}.RaisesOnReduce"  # recorded even when skipped


# -- numpy and pandas --------------------------------------------------------------------


def test_numpy_arrays_travel_as_out_of_band_buffers() -> None:
    arr = np.arange(1 << 17, dtype=np.float64)  # 1 MiB
    payload = payload_of(serialize({"arr": arr}), "arr")
    assert payload.buffers
    assert sum(b.raw().nbytes for b in payload.buffers) == arr.nbytes
    assert len(payload.data) < arr.nbytes // 100
    parts = payload.parts()
    assert bytes(parts[0]) == bytes(payload.data)
    assert sum(p.nbytes for p in parts[1:]) == arr.nbytes
    restored = load(payload)["arr"]
    np.testing.assert_array_equal(restored, arr)
    assert restored.flags.writeable


def test_arrays_sharing_only_a_dtype_are_not_grouped() -> None:
    """Every float64 array has the same dtype object; that is not sharing.

    Grouping them would make one small array drag every other array of
    its dtype into each checkpoint.
    """
    ser = serialize({"a": np.arange(10.0), "b": np.ones(5), "c": np.zeros(3, dtype=np.int32)})
    assert sorted(map(sorted, group_names(ser))) == [["a"], ["b"], ["c"]]


def test_one_array_twice_in_one_variable_stays_one_array() -> None:
    base = np.arange(6)
    ser = serialize({"pair": [base, base]})
    restored = load_all(ser)["pair"]
    assert restored[0] is restored[1]


def test_pandas_round_trip() -> None:
    df = pd.DataFrame({"a": np.arange(1000), "b": np.linspace(0, 1, 1000), "c": ["x"] * 1000})
    ser = serialize({"df": df})
    assert ser.skipped == {}
    pd.testing.assert_frame_equal(load_all(ser)["df"], df)


# -- load_payload --------------------------------------------------------------------------


def test_load_payload_rejects_unknown_pickler() -> None:
    with pytest.raises(ValueError, match="unknown pickler"):
        load_payload("marshal", pickle.dumps({}), [])


def test_load_payload_rejects_non_namespace() -> None:
    with pytest.raises(ValueError, match="namespace"):
        load_payload("pickle", pickle.dumps([1, 2]), [])


# -- other processes --------------------------------------------------------------------


def test_round_trip_through_a_fresh_process(tmp_path: Path) -> None:
    """Payloads of plain data and arrays load in an interpreter that never saw them."""
    shared = [1, 2, 3]
    ns = {
        "numbers": list(range(50)),
        "nested": {"a": {"b": [1.5, None, True]}, "t": (1, "x")},
        "text": "héllo",
        "blob": b"\x00\xff" * 10,
        "shared_a": shared,
        "shared_b": {"inner": shared},
        "floats": np.linspace(0, 1, 5000),
        "ints": np.arange(12, dtype=np.int32).reshape(3, 4),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    }
    ser = serialize(ns)
    assert ser.skipped == {}
    dump_payloads(ser, tmp_path / "payloads.pkl")
    report = run_python(
        LOAD_INTO_MAIN
        + """
    import json
    import numpy as np
    out = {}
    for name in ("numbers", "nested", "text", "blob", "shared_a", "shared_b"):
        out[name] = repr(globals()[name])
    for name in ("floats", "ints", "fortran"):
        arr = globals()[name]
        out[name] = [str(arr.dtype), list(arr.shape), arr.tolist(), arr.flags.writeable]
    out["still_shared"] = shared_b["inner"] is shared_a
    print(json.dumps(out))
    """,
        str(tmp_path / "payloads.pkl"),
        cwd=tmp_path,
    )
    for name in ("numbers", "nested", "text", "blob", "shared_a", "shared_b"):
        assert report[name] == repr(ns[name])
    for name in ("floats", "ints", "fortran"):
        arr = ns[name]
        assert report[name] == [str(arr.dtype), list(arr.shape), arr.tolist(), True]
    assert report["still_shared"] is True


#: Writes the payloads of ``serialize(ns)`` to argv[1] and prints what was saved how
#: (the end of a script that has imported json, pickle, sys and serialize).
WRITE = """
    ser = serialize(ns)
    with open(sys.argv[1], "wb") as f:
        f.write(pickle.dumps(
            [(q.names, q.pickler, bytes(q.data), [bytes(b.raw()) for b in q.buffers])
             for q in ser.payloads]
        ))
    print(json.dumps({
        "skipped": ser.skipped,
        "groups": sorted(sorted(q.names) for q in ser.payloads),
        "pickler": {n: q.pickler for q in ser.payloads for n in q.names},
    }))
"""

MAIN_DEFINITIONS = (
    """
    import json, pickle, sys
    from persistent_kernel.serializer import serialize

    SCALE = 3

    class P:
        def __init__(self, v):
            self.v = v

        def scaled(self):
            return self.v * SCALE

    p = P(2)
    inc = lambda x: x + 1

    def times_scale(x):
        return x * SCALE

    ns = {"P": P, "p": p, "inc": inc, "times_scale": times_scale, "SCALE": SCALE}
"""
    + WRITE
)


def test_main_definitions_need_dill(tmp_path: Path) -> None:
    """Classes, instances, lambdas and functions of ``__main__`` go through dill.

    Written by one process, loaded into the ``__main__`` of another that
    never defined them: the class comes back by value, the instance is of
    that very class, and functions read the restored module globals.
    """
    payloads = str(tmp_path / "main.pkl")
    written = run_python(MAIN_DEFINITIONS, payloads, cwd=tmp_path)
    assert written["skipped"] == {}
    for name in ("P", "p", "inc", "times_scale"):
        assert written["pickler"][name] == "dill"
    assert written["pickler"]["SCALE"] == "pickle"
    assert ["P", "p"] in written["groups"]

    loaded = run_python(
        LOAD_INTO_MAIN
        + """
    import json
    before = [inc(1), times_scale(2), p.scaled(), type(p) is P]
    SCALE = 10
    after = [times_scale(2), p.scaled()]
    print(json.dumps({"before": before, "after": after}))
    """,
        payloads,
        cwd=tmp_path,
    )
    assert loaded["before"] == [2, 6, 6, True]
    assert loaded["after"] == [20, 20]


def test_flat_containers_skip_tracking_but_still_share_themselves() -> None:
    """A dict of atoms and tuples of atoms is pickled without tracking its
    items; bound to two names it is still one group, and a container holding
    something mutable is still looked into."""
    from persistent_kernel import serializer

    flat = {f"k{i}": (i, str(i), float(i)) for i in range(1000)}
    inner = {"mutable": [1]}
    nested = {"t": (1, inner)}  # a tuple holding a dict: not flat
    assert serializer._private_tree(flat) and not serializer._private_tree(nested)
    assert serializer._private_tree([{"a": 1}])  # a dict held by its list alone
    ser = serialize({"flat": flat, "alias": flat, "nested": nested, "inner": inner})
    groups = sorted(sorted(p.names) for p in ser.payloads)
    assert groups == [["alias", "flat"], ["inner", "nested"]]


def _one_object_two_paths() -> tuple[dict[str, Any], list[tuple[str, str]]]:
    x = [1]
    return {"a": [x], "b": {"k": x}}, [("a[0]", "b['k']")]


def _dict_reached_from_two_lists() -> tuple[dict[str, Any], list[tuple[str, str]]]:
    d = {"v": [1]}
    return {"l1": [d], "l2": [0, [d]]}, [("l1[0]", "l2[1][0]")]


def _object_reached_only_through_a_shared_tuple() -> tuple[dict[str, Any], list[tuple[str, str]]]:
    inner = [1]
    pair = (inner, "x")  # the tuple is held twice; the list in it once, by the tuple
    return {"a": [pair], "b": {"p": pair}}, [("a[0][0]", "b['p'][0]")]


def _tuple_root_bound_twice() -> tuple[dict[str, Any], list[tuple[str, str]]]:
    t = ([1], 2)
    return {"t": t, "u": t}, [("t[0]", "u[0]")]


def _deep_below_the_roots() -> tuple[dict[str, Any], list[tuple[str, str]]]:
    x = {"deep": [1]}
    return {"a": [[[x]]], "b": {"k": [(x,)]}}, [("a[0][0][0]", "b['k'][0][0]")]


def _a_cycle() -> tuple[dict[str, Any], list[tuple[str, str]]]:
    c: list[Any] = []
    c.append(c)
    return {"a": [c], "b": {"c": c}}, [("a[0]", "b['c']"), ("a[0]", "a[0][0]")]


def _a_set_in_two_lists() -> tuple[dict[str, Any], list[tuple[str, str]]]:
    s = {1, 2}
    return {"a": [s], "b": [[s]]}, [("a[0]", "b[0][0]")]


def _a_list_in_a_dict_key_tuple_and_a_list() -> tuple[dict[str, Any], list[tuple[str, str]]]:
    x = [3]
    return {"a": {"k": (1, (2, x))}, "b": [x]}, [("a['k'][1][1]", "b[0]")]


@pytest.mark.parametrize(
    "make",
    [
        _one_object_two_paths,
        _dict_reached_from_two_lists,
        _object_reached_only_through_a_shared_tuple,
        _tuple_root_bound_twice,
        _deep_below_the_roots,
        _a_cycle,
        _a_set_in_two_lists,
        _a_list_in_a_dict_key_tuple_and_a_list,
    ],
)
def test_sharing_below_the_top_level_is_found(make: Any) -> None:
    """Whatever path leads two variables to one mutable object, they are one
    group and share it after a restore. Each case defeats a wrong shortcut:
    an object held once is reachable only through its holder, so a variable
    may skip tracking only if every holder up to its root is its own."""
    ns, same = make()
    ser = serialize(ns)
    assert group_names(ser) == [set(ns)]
    restored = load_all(ser)
    for left, right in same:
        assert eval(left, {}, restored) is eval(right, {}, restored), (left, right)


def test_containers_held_once_are_private_trees() -> None:
    """A list of small dicts and a dict of tuples, each item held by its
    container only, need no tracking; hold one item elsewhere and they do."""
    from persistent_kernel import serializer

    records = [{"id": i, "name": f"n{i}", "tags": [i, "x"]} for i in range(1000)]
    table = {f"k{i}": (i, f"v{i}", i / 2) for i in range(1000)}
    assert serializer._private_tree(records)
    assert serializer._private_tree(table)
    assert serializer._private_tree([1, "a", {"b": [2.0, None]}, (3, "c")])
    ser = serialize({"records": records, "table": table, "alias": table})
    assert sorted(map(sorted, group_names(ser))) == [["alias", "table"], ["records"]]
    held = records[500]["tags"]
    assert not serializer._private_tree(records)
    ser = serialize({"records": records, "held": held})
    assert group_names(ser) == [{"records", "held"}]
    restored = load_all(ser)
    assert restored["records"][500]["tags"] is restored["held"]
    del held
    for value in ([[1], {2}], ({"a": 1},), [bytearray(b"x")], [np.zeros(2)], [RaisesOnReduce()]):
        assert not serializer._private_tree(value), value


def test_large_plain_containers_are_the_candidates_for_a_helper() -> None:
    from persistent_kernel.serializer import SHARE_MIN, _candidates

    n = SHARE_MIN
    values = {
        "small": list(range(n - 1)),
        "rows": [{"a": i} for i in range(2 * n)],
        "table": {i: (i,) for i in range(3 * n)},
        "pairs": [(i, i) for i in range(n)],
        "objs": [RaisesOnReduce() for _ in range(4 * n)],  # grouped with its class first
    }
    assert _candidates(list(values), values) == ["table", "rows", "pairs"]
    assert _candidates(["small", "rows"], values) == []  # one is not worth a helper


def test_a_second_core_pickles_private_trees_to_the_same_bytes() -> None:
    """What a helper process pickles is byte for byte what this process would,
    so an unchanged variable is never written again because of where it was
    pickled; everything else is pickled here, as before."""
    import mmap

    from persistent_kernel import memory

    table = {f"k{i}": (i, f"v{i}") for i in range(300_000)}
    records = [{"id": i, "name": str(i)} for i in range(60_000)]
    other = {"x": [1]}
    values = {"table": table, "records": records, "other": other, "alias": [other]}
    values["arr"] = np.arange(5)
    values["bad"] = socket.socket()
    try:
        alone, helped = serialize(values), serialize(values, second_core=True)
    finally:
        values["bad"].close()

    def described(ser: Serialized) -> list[Any]:
        return [
            (p.names, p.pickler, bytes(p.data), [bytes(b.raw()) for b in p.buffers])
            for p in ser.payloads
        ]

    assert described(helped) == described(alone)
    assert helped.skipped == alone.skipped and "bad" in helped.skipped
    # records, the smaller, is shared with the helper; the helper's own results
    # (if it got to it first) are read from its file
    assert helped.second_core == (["records"] if memory.cores() > 1 else [])
    aside = [p.names for p in helped.payloads if isinstance(p.data.obj, mmap.mmap)]
    assert aside in ([], [["records"]]) and not alone.second_core
    assert load_all(helped)["records"] == records


# -- each object pickled once ---------------------------------------------------------

#: id -> how many times an instance of a class made by notebook_class() was pickled
PICKLED: collections.Counter[int] = collections.Counter()


def notebook_class() -> type:
    """A class as a notebook cell makes it (``__module__ == "__main__"``, so it is
    pickled by value with dill), counting each time one of its instances is pickled."""

    class Counted:
        def __init__(self, n: int) -> None:
            self.n = n

        def __getstate__(self) -> dict[str, Any]:
            PICKLED[id(self)] += 1
            return self.__dict__

    Counted.__module__ = "__main__"
    Counted.__qualname__ = Counted.__name__
    return Counted


def _class_and_instances() -> tuple[dict[str, Any], list[Any]]:
    C = notebook_class()
    objs, one = [C(i) for i in range(300)], C(-1)
    return {"C": C, "objs": objs, "one": one, "n": 5}, [*objs, one]


def _instance_in_two_containers() -> tuple[dict[str, Any], list[Any]]:
    C = notebook_class()
    x, y = C(1), C(2)
    return {"a": [x, 1], "b": {"k": x}, "alone": [y]}, [x, y]


def _instance_bound_twice_and_an_alias() -> tuple[dict[str, Any], list[Any]]:
    C = notebook_class()
    x = C(1)
    items = [C(2), C(3)]
    return {"x": x, "y": x, "items": items, "same": items}, [x, *items]


@pytest.mark.parametrize(
    "make", [_class_and_instances, _instance_in_two_containers, _instance_bound_twice_and_an_alias]
)
def test_each_object_is_pickled_once(make: Any) -> None:
    """Variables that share objects are pickled once, together: not alone
    first and then again as a group. Sharing survives the round trip."""
    ns, instances = make()
    PICKLED.clear()
    ser = serialize(ns)
    assert ser.skipped == {}
    assert set(PICKLED) == set(map(id, instances))
    assert set(PICKLED.values()) == {1}
    restored = load_all(ser)
    assert set(restored) == set(ns)
    for name, value in ns.items():
        for other, again in ns.items():
            assert (restored[name] is restored[other]) == (value is again), (name, other)


def test_class_and_instances_restore_as_one() -> None:
    ns, _ = _class_and_instances()
    ser = serialize(ns)
    assert sorted(map(sorted, group_names(ser))) == [["C", "objs", "one"], ["n"]]
    restored = load_all(ser)
    C = restored["C"]
    assert all(type(o) is C for o in restored["objs"])
    assert type(restored["one"]) is C and restored["one"].n == -1
    assert [o.n for o in restored["objs"]] == list(range(300))


def test_a_group_blames_the_instances_not_their_class() -> None:
    """The name a writer killed while pickling is blamed on (and left out of
    later checkpoints) is the instance's, not its class's, as when each was
    pickled alone."""
    ns, _ = _class_and_instances()
    told: list[str] = []
    serialize(ns, told.append)
    assert "objs,one" in told
    assert not [t for t in told if "C" in t.split(",")]


def _rebuild(v: int) -> tuple[str, int]:
    return ("rebuilt", v)


class _ReducesItself:
    def __init__(self, v: int) -> None:
        self.v = v

    def __reduce__(self) -> Any:
        return (_rebuild, (self.v,))


def test_a_class_that_reduces_itself_is_not_grouped_with_its_instances(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An instance whose class has its own ``__reduce__`` is pickled through
    whatever that names (here an imported function), not its class: it
    shares nothing with the class, as pickling it alone shows."""
    monkeypatch.setattr(_ReducesItself, "__module__", "__main__")
    ns = {"Own": _ReducesItself, "rebuild": _rebuild, "x": _ReducesItself(7)}
    ser = serialize(ns)
    assert ser.skipped == {}
    assert sorted(map(sorted, group_names(ser))) == [["Own"], ["rebuild"], ["x"]]
    assert load_all(ser)["x"] == ("rebuilt", 7)


def test_a_look_that_fails_leaves_the_decision_to_pickling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the look ahead of pickling fails on a value (a dict another thread
    changes while it is read: injected here, as a single thread cannot make
    it happen on cue), the value is still pickled and grouped by what its
    pickle meets."""
    from persistent_kernel import serializer

    x = [1]
    changing: dict[str, Any] = {"x": x, "y": [x]}
    real = serializer._first_links

    def failing(value: Any, ignore: set[int]) -> dict[int, Any]:
        if value is changing:
            raise RuntimeError("dictionary changed size during iteration")
        return real(value, ignore)

    monkeypatch.setattr(serializer, "_first_links", failing)
    ser = serialize({"changing": changing, "other": [x]})
    assert ser.skipped == {}
    assert group_names(ser) == [{"changing", "other"}]
    restored = load_all(ser)
    assert restored["changing"]["x"] is restored["other"][0]


def test_unchanged_groups_give_the_same_bytes() -> None:
    """The store skips a group whose bytes it already has: a namespace pickled
    twice gives the same streams, foreseen groups and late-found ones alike."""
    ns, _ = _class_and_instances()
    x = [1]
    ns.update({"deep_a": [[x]], "deep_b": [[x]], "plain": {"k": [1, 2]}})
    first, second = serialize(ns), serialize(ns)
    assert [(p.names, bytes(p.data)) for p in first.payloads] == [
        (p.names, bytes(p.data)) for p in second.payloads
    ]
    assert {"deep_a", "deep_b"} in group_names(first)


# -- notebook objects that pickle saves by name ------------------------------------------

NOTEBOOK_OBJECTS = """
    import enum, functools, json, pickle, sys
    from typing import Generic, TypeVar
    import numpy as np
    import sympy
    from persistent_kernel.serializer import serialize

    class Color(enum.Enum):
        RED = 1
        GREEN = 2
        def warm(self):
            return self is Color.RED

    class Prio(enum.IntEnum):
        LOW = 1
        HIGH = 2

    fav = Color.RED

    @functools.lru_cache(maxsize=8)
    def fib(n):
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    T = TypeVar("T", bound=int)

    class Box(Generic[T]):
        def __init__(self, item):
            self.item = item

    boxed = Box[int](5)
    x = sympy.symbols("x")
    lam = sympy.lambdify(x, sympy.sin(x) + sympy.besselj(0, x))
    deep = []
    cur = deep
    for _ in range(10_000):
        cur.append([])
        cur = cur[0]
    mm = np.memmap(sys.argv[2], dtype="int16", mode="w+", shape=(3, 4))
    mm[:] = 3

    class _Singleton:
        def __reduce__(self):
            return "ONLY"  # by name: a fresh __main__ has no ONLY

    ONLY = _Singleton()

    class Odd(enum.Enum):
        A = (1, "a")
        def __new__(cls, value, label):
            member = object.__new__(cls)
            member._value_ = value
            return member

    names = ["Color", "Prio", "fav", "fib", "T", "Box", "boxed", "lam", "deep", "mm", "ONLY",
             "Odd"]
    ser = serialize({n: globals()[n] for n in names})
    with open(sys.argv[1], "wb") as f:
        f.write(pickle.dumps(
            [(q.names, q.pickler, bytes(q.data), [bytes(b.raw()) for b in q.buffers])
             for q in ser.payloads]
        ))
    print(json.dumps({"skipped": ser.skipped, "files": [q.files for q in ser.payloads if q.files],
                      "size": {n: len(q.data) + sum(len(b.raw()) for b in q.buffers)
                               for q in ser.payloads for n in q.names}}))
"""


def test_notebook_objects_saved_by_name_come_back_by_value(tmp_path: Path) -> None:
    """Enums, lru_cache functions, TypeVars and Generic classes, lambdify
    functions, a 10,000-deep list and a memmap, written by one process and
    loaded in the ``__main__`` of another; what could only be saved by a name
    a fresh ``__main__`` lacks is skipped with a reason, not reported saved."""
    payloads, data = str(tmp_path / "nb.pkl"), str(tmp_path / "mm.dat")
    written = run_python(NOTEBOOK_OBJECTS, payloads, data, cwd=tmp_path)
    assert set(written["skipped"]) == {"ONLY", "Odd"}
    assert "by its name" in written["skipped"]["ONLY"]
    assert "__new__" in written["skipped"]["Odd"]
    assert written["files"] == [[[data, 24, os.stat(data).st_mtime_ns]]]
    assert written["size"]["mm"] < 24 * 50  # the file's content is not in the checkpoint
    loaded = run_python(
        LOAD_INTO_MAIN
        + """
    import json, typing
    import numpy as np
    d, depth = deep, 0
    while d:
        d, depth = d[0], depth + 1
    mm[0, 0] = 9
    mm.flush()
    print(json.dumps({
        "enum": [fav is Color.RED, Color(2) is Color.GREEN, fav.warm(), Prio.HIGH > Prio.LOW,
                 Prio(2) is Prio.HIGH],
        "fib": [fib(50), fib.cache_parameters()["maxsize"]],
        "generic": [boxed.item, type(boxed) is Box, Box.__parameters__ == (T,),
                    T.__bound__ is int, T.__module__,
                    typing.get_args(boxed.__orig_class__)[0] is int],
        "lam": round(lam(2.0), 6),
        "depth": depth,
        "mm": [type(mm).__name__, mm.mode, mm.filename, mm.sum().item()],
    }))
    """,
        payloads,
        cwd=tmp_path,
    )
    assert loaded["enum"] == [True] * 5
    assert loaded["fib"] == [12586269025, 8]
    assert loaded["generic"] == [5, True, True, True, "__main__", True]
    assert loaded["lam"] == round(math.sin(2.0) + 0.2238907791, 6)
    assert loaded["depth"] == 10_000
    assert loaded["mm"] == ["memmap", "r+", data, 9 + 3 * 11]
    assert np.fromfile(data, dtype="int16")[0] == 9  # the write reached the file
