"""``persistent-kernel``: install the kernelspec; look at, export and remove checkpoints.

Each subcommand is a function that returns data; ``main`` only parses
flags, calls it and prints the data (as text, or as JSON with ``--json``).
Nothing here starts a kernel. Only ``export`` unpickles: it loads a
checkpoint (one signed with your secret) to write it out again as one file.

A session is named by its key as ``list`` shows it, or by the path of its
notebook (for a console: its working directory), or by its directory name
under ``sessions/``. Every subcommand that reads checkpoints takes
``--checkpoint-dir`` (default: the kernel's, :func:`default_root`: the
``PersistentKernel.checkpoint_dir`` its configuration files set, read as
the kernel reads them, else its default).

Exit codes:
  0  success
  1  the operation failed (I/O error, corrupt or untrusted checkpoint, session in use)
  2  bad usage (unknown subcommand or flag, bad value)
  3  no such session, generation or variable

Errors are printed to stderr as one sentence.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import exchange, kernelconfig, kernelspec, render
from .content import parse as parse_content
from .errors import (
    CorruptCheckpoint,
    NoCheckpoint,
    NoSuchVariable,
    PersistentKernelError,
    StoreBusy,
    UnreadableCheckpoint,
    sentence,
)
from .restore import history
from .store import Manifest, SessionStore, where
from .store.rename import adopted_key
from .store.where import open_store

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3

EXIT_CODES = """\
exit codes:
  0  success
  1  the operation failed (I/O error, corrupt or untrusted checkpoint, session in use)
  2  bad usage (unknown subcommand or flag, bad value)
  3  no such session, generation or variable"""

#: How long rm and prune wait for a kernel writing a checkpoint of the session.
LOCK_TIMEOUT = 60.0


def default_root() -> str:
    """The storage root the kernel uses: ``checkpoint_dir`` from its configuration
    files (see :mod:`.kernelconfig`), else its default."""
    return kernelconfig.checkpoint_dir()


# -- finding sessions --------------------------------------------------------------------


def find_session(root: str, arg: str, cwd: str | None = None) -> SessionStore:
    """The session *arg* names in the store *root* names: a session key, a notebook or
    folder path, or a session directory name (see :func:`.store.where.find_session`,
    which ``%persist restore --from`` uses too). :class:`NoCheckpoint` if there is none."""
    return where.find_session(open_store(root), arg, cwd)


def _label(session: SessionStore, manifest: Manifest | None = None) -> str:
    """The session's key now: the one a rename moved it to, else the one it was written
    under (its manifests keep the name they were signed with)."""
    moved = adopted_key(session)
    if moved is not None:
        return moved
    if manifest is not None:
        return manifest.session
    return session.key or session.path.name


def _notebook_gone(key: str, manifest: Manifest) -> bool:
    """Whether the notebook of session *key* is no longer where its key says (a session
    set aside when its notebook was deleted has a key no file has)."""
    notebook = key if os.path.isabs(key) else manifest.notebook
    return bool(notebook) and os.path.isabs(str(notebook)) and not os.path.exists(str(notebook))


def _manifest(session: SessionStore, generation: int | None) -> tuple[Manifest, list[str]]:
    """The chosen generation's manifest (default: the newest whose content reads)."""
    if generation is not None:
        try:
            return session.read_manifest(generation), []
        except NoCheckpoint:
            raise NoCheckpoint(f"{_label(session)} has no generation {generation}") from None
    if not session.generations():
        raise NoCheckpoint(f"{_label(session)} has no checkpoints")
    problems: list[str] = []
    try:
        manifest, _ = session.newest(parse_content, problems)
        return manifest, problems
    except NoCheckpoint as exc:
        raise CorruptCheckpoint(f"no checkpoint of {_label(session)} can be read ({exc})") from exc


def _describe(session: SessionStore) -> dict[str, Any]:
    """What a removal reports about a session; nothing unpickled."""
    try:
        manifest: Manifest | None = session.latest()[0]
    except NoCheckpoint:
        manifest = None
    return {
        "session": _label(session, manifest),
        "notebook": manifest.notebook if manifest else None,
        "directory": str(session.path),
        "generations": len(session.generations()),
        "newest": manifest.created if manifest else None,
        "disk_usage": session.disk_usage(),
    }


# -- subcommands: each returns data ------------------------------------------------------


def list_sessions(root: str) -> list[dict[str, Any]]:
    """One record per session that has a readable checkpoint, newest first."""
    rows: list[dict[str, Any]] = []
    for session in open_store(root).sessions():
        generations = session.generations()
        problems: list[str] = []
        try:
            manifest, content = session.newest(parse_content, problems)
        except (NoCheckpoint, UnreadableCheckpoint):
            continue
        key = _label(session, manifest)
        rows.append(
            {
                "session": key,
                "notebook": manifest.notebook,
                "notebook_gone": _notebook_gone(key, manifest),
                "directory": str(session.path),
                "generations": len(generations),
                "newest": manifest.generation,
                "created": manifest.created,
                "size": manifest.size,
                "disk_usage": session.disk_usage(),
                "variables": sorted(content.variables),
                "skipped": sorted(content.skipped),
                "problems": problems,
            }
        )
    rows.sort(key=lambda r: r["created"], reverse=True)
    return rows


def show_session(root: str, arg: str, generation: int | None = None) -> dict[str, Any]:
    """The variables of one generation (default: the newest) with type, size and
    status, from its manifest alone.

    ``size`` is the size of the variable's group: variables that share objects
    are saved together (``shared_with``), and a module bound to a name is
    saved as its name (size 0).
    """
    return describe_generation(find_session(root, arg), generation)


def describe_generation(session: SessionStore, generation: int | None = None) -> dict[str, Any]:
    """:func:`show_session` of a session already found (the kernel's own, for its panel)."""
    manifest, problems = _manifest(session, generation)
    content = parse_content(manifest)
    rows: list[dict[str, Any]] = []
    for name, variable in content.variables.items():
        group = content.group_of(name)
        rows.append(
            {
                "name": name,
                "type": variable.type,
                "status": "saved",
                "reason": None,
                "size": content.size_of(name),
                "module": variable.module,
                "shared_with": [n for n in group.names if n != name] if group else [],
                "carried": variable.carried,
            }
        )
    for name, reason in content.skipped.items():
        rows.append(
            {
                "name": name,
                "type": content.skipped_types.get(name),
                "status": "skipped",
                "reason": reason,
                "size": None,
                "module": None,
                "shared_with": [],
                "carried": False,
            }
        )
    rows.sort(key=lambda r: str(r["name"]))
    return {
        "session": manifest.session,
        "notebook": manifest.notebook,
        "directory": str(session.path),
        "generation": manifest.generation,
        "generations": session.generations(),
        "created": manifest.created,
        "size": manifest.size,
        "python": manifest.raw.get("python"),
        "dill": manifest.raw.get("dill"),
        "persistent_kernel": manifest.raw.get("persistent_kernel"),
        "packages": dict(content.packages),
        "variables": rows,
        "notes": list(content.notes),
        "problems": problems,
    }


def session_history(root: str, arg: str) -> dict[str, Any]:
    """The generations kept, oldest first, as :func:`persistent_kernel.restore.history`
    compares them (the oldest kept lists everything as added; an unreadable
    one is listed with ``error``)."""
    session = find_session(root, arg)
    if not session.generations():
        raise NoCheckpoint(f"{_label(session)} has no checkpoints")
    rows = history(session)
    described = _describe(session)
    return {
        "session": described["session"],
        "notebook": described["notebook"],
        "directory": str(session.path),
        "generations": rows,
    }


def export_session(
    root: str,
    arg: str,
    path: str,
    generation: int | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write a generation (default: the newest intact) to *path* as one file that
    ``dill.load_module`` loads without this package; see :mod:`.exchange`."""
    session = find_session(root, arg)
    if generation is not None:
        _manifest(session, generation)  # "no such generation", worded for this session
    elif not session.generations():
        raise NoCheckpoint(f"{_label(session)} has no checkpoints")
    try:
        result = exchange.export_generation(session, path, generation, names or None)
    except (NoCheckpoint, NoSuchVariable) as exc:
        raise type(exc)(f"{_label(session)}: {exc}") from exc
    return {"session": _label(session), **result.to_dict()}


def remove_session(root: str, arg: str, lock_timeout: float = LOCK_TIMEOUT) -> dict[str, Any]:
    """Delete a session's checkpoints and its directory, holding its lock.

    :class:`StoreBusy` if a kernel is writing a checkpoint of it. A kernel
    still running on that notebook starts a new checkpoint after its next
    change (``%persist clear`` there forgets it from inside).
    """
    session = find_session(root, arg)
    removed = _describe(session)
    _remove(session, lock_timeout)
    return removed


def _remove(session: SessionStore, lock_timeout: float) -> None:
    with session.locks.locked(lock_timeout):
        if session.locks.running_writers():
            raise StoreBusy(
                f"a kernel is writing a checkpoint of {_label(session)}; try again when it is done"
            )
        session.remove()


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a sum like ``1d12h``."""
    compact = text.strip().lower()
    if not compact or _DURATION.sub("", compact):
        raise ValueError(f"{text!r} is not a duration like 30d, 12h or 90m")
    return sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(compact))


def _newest_time(session: SessionStore, newest: float | None) -> float:
    """When the session last checkpointed: its newest readable manifest, or the
    newest file of it if any manifest cannot be verified (a newer release's,
    one damaged or unreadable for now), so that such data is never judged
    old by the generations around it."""
    if newest is not None and not _unverified(session):
        return newest
    modified = session.backend.modified()
    if modified is None:  # the backend cannot tell (a bucket): age unknown, keep it
        return time.time()
    return max(modified, newest or 0.0)


def _unverified(session: SessionStore) -> bool:
    """Whether any generation of *session* cannot be read and verified."""
    for generation in session.generations():
        try:
            session.read_manifest(generation)
        except NoCheckpoint:
            continue
        except (UnreadableCheckpoint, OSError):
            return True
    return False


def prune_sessions(
    root: str,
    older_than: float,
    dry_run: bool = False,
    now: float | None = None,
    lock_timeout: float = LOCK_TIMEOUT,
) -> dict[str, Any]:
    """Delete every session whose newest checkpoint is more than *older_than*
    seconds old (``dry_run``: only say which). A session in use is left alone
    and listed under ``failed``: one whose kernel is writing on this machine
    (its lock), or, in a bucket, one a kernel on any machine holds a fresh
    lease on (see :meth:`.store.Store.in_use`), however old its checkpoints."""
    now = time.time() if now is None else now
    removed: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    store = open_store(root)
    for session in store.sessions():
        try:
            info = _describe(session)
            age = now - _newest_time(session, info["newest"])
        except FileNotFoundError:  # removed meanwhile
            continue
        if age <= older_than:
            continue
        info["age"] = age
        try:
            busy = store.in_use(session, now)
        except OSError as exc:  # cannot tell: fail closed
            busy = f"whether a kernel is using it cannot be told ({sentence(exc)})"
        if busy is not None:
            failed.append({**info, "error": busy})
            continue
        if not dry_run:
            try:
                _remove(session, lock_timeout)
            except OSError as exc:
                failed.append({**info, "error": sentence(exc)})
                continue
        removed.append(info)
    return {"older_than": older_than, "dry_run": dry_run, "removed": removed, "failed": failed}


# -- command line ------------------------------------------------------------------------


def _generation(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a generation number (1, 2, ...)")
    return int(text)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="persistent-kernel",
        description="Manage the Python (persistent) Jupyter kernel and its checkpoints.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "--checkpoint-dir",
        default=None,
        help="storage root (default: the kernel's: PersistentKernel.checkpoint_dir from "
        "ipython_kernel_config.py or persistent_kernel_config.py, else the default)",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON")
    session = argparse.ArgumentParser(add_help=False)
    session.add_argument("session", metavar="SESSION|NOTEBOOK", help="session key or notebook path")

    def add(name: str, help: str, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help,
            description=help[0].upper() + help[1:] + ".",
            parents=list(parents),
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    inst = add("install", "install the kernelspec for this Python")
    where = inst.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user")
    where.add_argument("--sys-prefix", action="store_true", help="install into sys.prefix")
    where.add_argument("--prefix", help="install into PREFIX/share/jupyter/kernels")
    inst.add_argument("--name", default=kernelspec.KERNEL_NAME, help="kernelspec name")
    inst.add_argument(
        "--display-name", default=kernelspec.DISPLAY_NAME, help="name shown in Jupyter"
    )

    add("list", "list sessions with checkpoints (nothing is unpickled)", as_json, store)

    show = add(
        "show", "show a generation's variables: type, size, status (nothing is unpickled)",
        session, as_json, store,
    )  # fmt: skip
    show.add_argument("--generation", type=_generation, help="generation (default: the newest)")

    add(
        "history", "list the generations kept, with the variables each added, changed, removed",
        session, as_json, store,
    )  # fmt: skip

    export = add(
        "export",
        "write a generation to one file that plain dill.load_module(PATH) loads "
        "(this loads the checkpoint, which runs its code)",
        session, as_json, store,
    )  # fmt: skip
    export.add_argument("path", metavar="PATH", help="the file to write (replaced if it exists)")
    export.add_argument("names", metavar="NAME", nargs="*", help="variables to export (all)")
    export.add_argument("--generation", type=_generation, help="generation (default: the newest)")

    add("rm", "delete a session's checkpoints", session, as_json, store)

    prune = add(
        "prune", "delete the sessions whose newest checkpoint is older than DURATION",
        as_json, store,
    )  # fmt: skip
    prune.add_argument(
        "--older-than", type=_duration, required=True, metavar="DURATION",
        help="age such as 30d, 12h, 90m (units s, m, h, d, w)",
    )  # fmt: skip
    prune.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    return parser


def _fail(exc: BaseException, code: int) -> NoReturn:
    print(f"persistent-kernel: {sentence(exc)}", file=sys.stderr)
    raise SystemExit(code) from exc


def _run(args: argparse.Namespace) -> int:
    """Call the subcommand *args* names; print its data. Returns the exit code."""
    root = getattr(args, "checkpoint_dir", None) or default_root()
    printers: dict[str, tuple[Callable[[], Any], Callable[[Any], str]]] = {
        "list": (lambda: list_sessions(root), render.sessions_text),
        "show": (lambda: show_session(root, args.session, args.generation), render.show_text),
        "history": (lambda: session_history(root, args.session), render.history_text),
        "export": (
            lambda: export_session(root, args.session, args.path, args.generation, args.names),
            render.export_text,
        ),
        "rm": (lambda: remove_session(root, args.session), render.removed_text),
        "prune": (lambda: prune_sessions(root, args.older_than, args.dry_run), render.prune_text),
    }
    if args.command == "install":
        path = kernelspec.install(
            user=args.user,
            prefix=args.prefix,
            sys_prefix=args.sys_prefix,
            name=args.name,
            display_name=args.display_name,
        )
        print(f"Installed kernelspec {args.name} in {path}")
        return EXIT_OK
    compute, text = printers[args.command]
    data = compute()
    print(json.dumps(data, indent=1) if args.json else text(data))
    failed = data.get("failed") if isinstance(data, dict) else None
    for row in failed or []:
        print(
            f"persistent-kernel: {row['session']} was not removed: {row['error']}", file=sys.stderr
        )
    return EXIT_FAILED if failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> None:
    """The ``persistent-kernel`` command; exits with the codes in :data:`EXIT_CODES`."""
    args = build_parser().parse_args(argv)
    try:
        code = _run(args)
    except (NoCheckpoint, NoSuchVariable) as exc:
        _fail(exc, EXIT_NOT_FOUND)
    except (PersistentKernelError, OSError) as exc:
        _fail(exc, EXIT_FAILED)
    if code != EXIT_OK:
        raise SystemExit(code)
