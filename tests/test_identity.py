"""Which checkpoints a starting kernel continues: the rules of identity, in process."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from persistent_kernel.identity import (
    Candidate,
    Decision,
    Signals,
    batch_key,
    cells_to_record,
    decide,
    decide_unattached,
    kernel_id,
    restore_hint,
    signals_from,
)
from persistent_kernel.session import JUPYTER_SESSION_ENV, SESSION_ENV, notebook_path
from persistent_kernel.startup import survey
from persistent_kernel.store import Store

ROOT = "/home/u/work"
A = f"{ROOT}/Untitled.ipynb"
B = f"{ROOT}/analysis.ipynb"


def ids(*names: str) -> frozenset[str]:
    return frozenset(names)


def run(me: Signals, candidates: list[Candidate], present: dict[str, frozenset[str]]) -> Decision:
    """decide() over an imagined folder: *present* maps the paths there to their cell ids."""
    return decide(me, candidates, present.__contains__, lambda p: present.get(p, frozenset()))


# -- the connection file and the notebook path --------------------------------------------


def test_kernel_id_from_the_connection_file_name() -> None:
    assert kernel_id("/run/jupyter/kernel-0b6e-41.json") == "0b6e-41"
    assert kernel_id("kernel-v3abc.json") == "v3abc"  # VS Code's
    assert kernel_id("/tmp/tmpo5rz368g.json") == "tmpo5rz368g"  # jupyter_client's own
    assert kernel_id(None) is None and kernel_id("") is None


def test_relative_session_path_of_a_notebook_in_a_subfolder() -> None:
    """A session created without a name passes the path from the server root, and the
    kernel starts in the notebook's folder: not sub/sub/nb.ipynb."""
    environ = {JUPYTER_SESSION_ENV: "sub/nb.ipynb"}
    assert notebook_path(environ, f"{ROOT}/sub") == f"{ROOT}/sub/nb.ipynb"
    deep = {JUPYTER_SESSION_ENV: "a/b/nb.ipynb"}
    assert notebook_path(deep, f"{ROOT}/a/b") == f"{ROOT}/a/b/nb.ipynb"
    # a folder that only shares a suffix of a name is not the same folder
    assert notebook_path(environ, f"{ROOT}/notsub") == f"{ROOT}/notsub/sub/nb.ipynb"
    # in the root, as before
    assert notebook_path({JUPYTER_SESSION_ENV: "nb.ipynb"}, ROOT) == f"{ROOT}/nb.ipynb"
    assert notebook_path({JUPYTER_SESSION_ENV: "/abs/nb.ipynb"}, ROOT) == "/abs/nb.ipynb"
    assert notebook_path({}, ROOT) is None


def test_signals_take_vscode_file_when_the_server_passed_no_path() -> None:
    cells = {f"{ROOT}/v.ipynb": ids("c1")}
    got = signals_from({}, ROOT, "kernel-v3ff.json", lambda p: cells.get(p, frozenset()), "v.ipynb")
    assert got.notebook == f"{ROOT}/v.ipynb" and got.cells == ids("c1")
    assert got.kernel_id == "v3ff"
    server = {JUPYTER_SESSION_ENV: "s.ipynb", SESSION_ENV: "k"}
    got = signals_from(server, ROOT, None, lambda p: frozenset(), "v.ipynb")
    assert got.notebook == f"{ROOT}/s.ipynb" and got.explicit == "k"


# -- a notebook path: decide() ---------------------------------------------------------------


def test_own_state_is_restored() -> None:
    me = Signals("k1", B, ids("c1", "c2"))
    d = run(me, [Candidate(B, B, "k0", ids("c1", "c2", "c3"))], {B: me.cells})
    assert (d.key, d.restore, d.adopt_from, d.note) == (B, True, None, None)


def test_own_state_without_cell_ids_goes_by_the_path() -> None:
    me = Signals("k1", B, ids())
    assert run(me, [Candidate(B, B, "k0", ids("c1"))], {}).restore
    me = Signals("k1", B, ids("c1"))
    assert run(me, [Candidate(B, B, None, ids())], {B: me.cells}).restore


def test_rename_while_running_then_restart_adopts_by_kernel_id() -> None:
    """Lab: new notebook, cells, rename, one more cell, restart with the new path.

    The checkpoints were written under the old name, by this kernel id; the
    old name's file is gone and the cells recorded may be empty (never saved)."""
    me = Signals("k1", B, ids("c1"))
    old = Candidate(A, A, "k1", ids())
    d = run(me, [old], {B: me.cells})
    assert (d.key, d.restore, d.adopt_from, d.renamed_from) == (B, True, A, A)


def test_rename_while_stopped_adopts_by_cells() -> None:
    me = Signals("k2", B, ids("c1", "c2"))
    d = run(me, [Candidate(A, A, "k1", ids("c1", "c2"))], {B: me.cells})
    assert (d.adopt_from, d.renamed_from) == (A, A)


def test_a_duplicate_starts_clean() -> None:
    copy = f"{ROOT}/Untitled-Copy1.ipynb"
    me = Signals("k2", copy, ids("c1", "c2"))
    d = run(me, [Candidate(A, A, "k1", ids("c1", "c2"))], {A: me.cells, copy: me.cells})
    assert (d.key, d.restore, d.adopt_from, d.note) == (copy, False, None, None)


def test_old_name_now_holding_another_notebook_does_not_stop_adoption() -> None:
    me = Signals("k3", B, ids("c1", "c2"))
    d = run(me, [Candidate(A, A, "k1", ids("c1", "c2"))], {A: ids("n1"), B: me.cells})
    assert d.adopt_from == A


def test_a_new_notebook_under_an_old_name_gets_nothing_and_is_told_where() -> None:
    """The renamed notebook's kernel still runs and writes under the old name."""
    me = Signals("k2", A, ids("n1"))
    theirs = Candidate(A, A, "k1", ids("c1", "c2"), generation=4)
    d = run(me, [theirs], {A: me.cells, B: ids("c1", "c2")})
    assert not d.restore and d.adopt_from is None
    assert d.key != A and A in d.key  # its own lineage, beside the other's, never mixed
    assert d.note is not None and restore_hint(A) in d.note and "checkpoint 4" in d.note
    named = Candidate(A, A, "k1", ids("c1", "c2"), generation=4, handle="a.ipynb-0123")
    d = decide(me, [named], {A, B}.__contains__, {A: me.cells, B: named.cells}.__getitem__,
               lambda c: B if c.cells == named.cells else None)  # fmt: skip
    assert d.note is not None and "belongs to analysis.ipynb" in d.note
    assert restore_hint("a.ipynb-0123") in d.note
    # later, restarted (same kernel id) or reopened (same cells): its own lineage again
    mine = Candidate(d.key, A, "k2", ids("n1"))
    for again in (me, Signals("k9", A, ids("n1"))):
        d2 = run(again, [theirs, mine], {A: ids("n1")})
        assert (d2.key, d2.restore, d2.adopt_from) == (mine.key, True, None), again
    # once the other notebook took its checkpoints away (its restart), ours moves home
    d3 = run(me, [mine], {A: ids("n1")})
    assert (d3.key, d3.adopt_from, d3.renamed_from) == (A, mine.key, None)


def test_two_candidates_are_ambiguous_and_adopt_nothing() -> None:
    me = Signals("k3", B, ids("c1", "c2"))
    gone1, gone2 = f"{ROOT}/x.ipynb", f"{ROOT}/y.ipynb"
    both = [Candidate(gone1, gone1, "k1", ids("c1", "c2")), Candidate(gone2, gone2, "k2", me.cells)]
    d = run(me, both, {B: me.cells})
    assert (d.key, d.restore, d.adopt_from) == (B, False, None)


def test_kernel_id_match_with_contradicting_cells_is_not_adopted() -> None:
    me = Signals("k1", B, ids("c1"))
    d = run(me, [Candidate(A, A, "k1", ids("z1", "z2"))], {B: me.cells})
    assert d.adopt_from is None


def test_explicit_session_wins() -> None:
    me = Signals("k1", B, ids("c1"), explicit="mine")
    d = run(me, [Candidate(B, B, "k0", ids("z"))], {})
    assert (d.key, d.restore) == ("mine", True)


# -- no notebook path: R's rule -----------------------------------------------------------------


def test_unattached_waits_for_the_first_cell() -> None:
    me = Signals("k1", None, cwd=ROOT)
    d = decide_unattached(me, None, [Candidate(ROOT, None, "k0")])
    assert d.defer and not d.restore


def test_console_restores_the_folder() -> None:
    me = Signals("k1", None, cwd=ROOT)
    d = decide_unattached(me, True, [Candidate(ROOT, None, "k0")])
    assert (d.key, d.restore) == (ROOT, True)


def test_batch_run_restores_nothing_and_keeps_its_own_key() -> None:
    me = Signals("k1", None, cwd=ROOT)
    d = decide_unattached(me, False, [Candidate(ROOT, None, "k0")])
    assert (d.key, d.restore) == (batch_key("k1"), False)
    assert batch_key("k1") != batch_key("k2")


def test_a_kernel_restarted_by_its_manager_resumes_at_once() -> None:
    me = Signals("k1", None, cwd=ROOT)
    for key in (batch_key("k1"), ROOT):
        d = decide_unattached(me, None, [Candidate(key, None, "k1")])
        assert (d.key, d.restore, d.defer) == (key, True, False)


# -- what the writer records ----------------------------------------------------------------------


def test_cells_recorded_follow_the_notebook_not_its_old_path() -> None:
    known = ids("c1")
    assert cells_to_record(True, ids("c1", "c2"), known, None) == (ids("c1", "c2"), True)
    # renamed away: our ids are kept, and the checkpoint says the notebook was gone
    assert cells_to_record(False, ids(), known, ids("c1", "c2")) == (ids("c1", "c2"), False)
    # another notebook now lives at the old path: the same
    assert cells_to_record(True, ids("n1"), known, ids("c1", "c2")) == (ids("c1", "c2"), False)
    # nothing known (a notebook never saved with cells): what the path holds
    assert cells_to_record(True, ids(), ids(), None) == (ids(), True)
    assert cells_to_record(False, ids(), ids(), None) == (ids(), False)


def test_state_written_after_its_notebook_left_is_not_a_new_files() -> None:
    """Lab: Untitled.ipynb renamed while its kernel runs, which saves once more (no cells
    on disk ever, so none recorded); then a new notebook takes the name Untitled.ipynb."""
    theirs = Candidate(A, A, "k1", ids(), generation=2, present=False)
    d = run(Signals("k2", A, ids()), [theirs], {A: ids()})
    assert not d.restore and d.note is not None and d.key != A
    # the same state, its notebook simply deleted and not replaced: the path decides
    assert run(Signals("k2", A, ids()), [theirs], {}).restore
    # and this kernel's own restart resumes whatever the files say
    assert run(Signals("k1", A, ids()), [theirs], {A: ids()}).restore


def test_survey_reads_manifests_only(tmp_path: Path) -> None:
    store = Store(tmp_path)
    session = store.session(B)
    session.ensure()
    info = {"session": B, "notebook": B, "kernel_id": "k1", "notebook_cells": ["c2", "c1"]}
    session.commit({"variables": {}, "groups": [], "skipped": {}}, [], info)
    store.session("empty").ensure()
    found = survey(store)
    handle = session.path.name  # what `%persist restore --from` takes
    assert found == [Candidate(B, B, "k1", ids("c1", "c2"), generation=1, handle=handle)]


def test_survey_names_an_adopted_session_by_its_new_key(tmp_path: Path) -> None:
    """Kept beside foreign state, then moved home: its manifests still name the old key."""
    store = Store(tmp_path)
    beside = store.session(f"{A} (kernel k2)")
    beside.ensure()
    info = {"session": beside.key, "notebook": A, "kernel_id": "k2", "notebook_cells": []}
    beside.commit({"variables": {}, "groups": [], "skipped": {}}, [], info)
    beside.path.rename(store.session(A).path)
    assert [c.key for c in survey(store)] == [A]
    store.session(A).path.rename(store.session("elsewhere").path)
    assert survey(store) == []  # no key it names leads here: not addressable, left alone


def test_a_copy_the_server_made_starts_clean_and_is_told_where_the_state_is() -> None:
    """Its cells are the original's, and the original's state may name an old path: by
    its cells alone it would be adopted. The server said it is a copy."""
    me = Signals("k9", B, ids("c1", "c2"), copy_of=A)
    theirs = Candidate(f"{ROOT}/old.ipynb", f"{ROOT}/old.ipynb", "k1", ids("c1", "c2"))
    d = run(me, [theirs], {A: ids("c1", "c2"), B: me.cells})
    assert (d.key, d.restore, d.adopt_from) == (B, False, None)
    assert d.note is not None and "copy of Untitled.ipynb" in d.note and restore_hint(A) in d.note
    assert run(replace(me, copy_of=None), [theirs], {A: ids("c1", "c2"), B: me.cells}).adopt_from
