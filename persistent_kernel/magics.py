"""``%persist``: a thin shell over the kernel's checkpoint policy and the store.

One small method per subcommand; parsing by IPython's ``magic_arguments``,
so ``%persist?`` documents them all.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.utils.process import arg_split  # type: ignore[attr-defined]  # as magic_arguments splits

from . import autosave, checkpoint, namespace, render, restore
from .errors import CheckpointFailed, NoCheckpoint, PersistentKernelError, sentence
from .store import SessionStore
from .store.where import find_session, open_store

if TYPE_CHECKING:
    from .checkpointer import Checkpointer
    from .kernel import PersistentKernel

COMMANDS = {
    "status": "the last checkpoint (when, generation, size, saved, skipped and why); "
    "whether one is pending",
    "save": "checkpoint now; returns once the checkpoint is committed",
    "history": "the generations kept: when, size, variables added / changed / removed",
    "restore": "restore [--from NOTEBOOK] [GENERATION] [NAME ...]: bring back a generation "
    "(default: the newest), or some of its variables, into the live namespace; --from takes "
    "them from another notebook's checkpoints (a path or a session key)",
    "exclude": "exclude NAME|GLOB ...: never save these names (kept for this notebook "
    "across restarts)",
    "include": "include NAME|GLOB ...: save these names again, even if configured out",
    "off": "stop automatic checkpoints in this kernel (%persist save still works)",
    "on": "resume automatic checkpoints",
    "clear": "forget this notebook's checkpoints, so the next start is clean",
    "export": "export PATH [NAME ...]: checkpoint, then write one file that plain "
    "dill.load_module(PATH) loads anywhere with dill and the same libraries",
    "import": "import PATH: load a file made by export or by dill.dump_module into the "
    "namespace; this runs the file's code, so import only files you trust",
    "rerun": "rerun NAME ...: run again the cell that last assigned each variable the "
    "restore did not bring back (shown with the cell in the restore report)",
}


def source_session(checkpoint_dir: str, source: str, cwd: str) -> SessionStore:
    """The session ``%persist restore --from SOURCE`` reads: *source* (a notebook path
    or a session key) looked up in the store *checkpoint_dir* names, a bucket's too,
    as the command line looks it up. :class:`UsageError` if it holds no checkpoint."""
    try:
        session = find_session(open_store(checkpoint_dir), source, cwd)
    except NoCheckpoint:
        raise UsageError(f"no checkpoints of {source!r}") from None
    if not session.generations():
        raise UsageError(f"no checkpoints of {source!r}")
    return session


@magics_class
class PersistMagics(Magics):
    """Checkpoint control for the persistent kernel."""

    def __init__(self, shell: Any, kernel: PersistentKernel) -> None:
        super().__init__(shell=shell)
        self.kernel = kernel

    @magic_arguments()
    @argument(
        "command",
        nargs="?",
        default="status",
        choices=list(COMMANDS),
        help="; ".join(f"{name}: {text}" for name, text in COMMANDS.items()).replace("%", "%%"),
    )
    @argument("args", nargs="*", help="what the command works on (see above)")
    @argument(
        "--from",
        dest="source",
        default=None,
        help="restore only: the notebook (path or session key) whose checkpoints to read",
    )
    @line_magic
    def persist(self, line: str) -> None:
        """Show or control this notebook's checkpoints."""
        # Options may stand anywhere, as the README writes them (restore --from NB NAME).
        parser = self.persist.parser
        args = parser.parse_intermixed_args(arg_split(line))
        if args.source is not None and args.command != "restore":
            raise UsageError("--from goes with %persist restore only")
        try:
            if args.command == "restore":
                self._restore(list(args.args), args.source)
            else:
                getattr(self, f"_{args.command}")(list(args.args))
        except (PersistentKernelError, OSError) as exc:
            # One line, not a traceback: these are conditions, not bugs.
            raise UsageError(sentence(exc)) from exc

    @property
    def checkpoints(self) -> Checkpointer:
        """The kernel's checkpointer, once the start-up restore has decided where it writes."""
        checkpointer = self.kernel.checkpointer
        if checkpointer is not None and checkpointer.target is not None:
            return checkpointer
        if self.kernel.restoring:
            raise UsageError("the kernel is still restoring; run %persist again once it is done")
        raise UsageError(
            "checkpoints are off in this kernel: its start could not decide where to write "
            "them (the notice above its first cell says why); restart it once that is fixed"
        )

    def _no_args(self, args: list[str], command: str) -> None:
        if args:
            raise UsageError(f"%persist {command} takes no arguments")

    # -- subcommands --------------------------------------------------------------

    def _status(self, args: list[str]) -> None:
        self._no_args(args, "status")
        checkpoints = self.checkpoints
        self._looks_only("status")
        checkpoints.wait_for_writer(timeout=0)
        assert checkpoints.target is not None
        print(f"Session: {checkpoints.target.key}")
        if not self.kernel.autosave:
            print("Automatic checkpoints are off (%persist on resumes them).")
        result, committed = checkpoints.last_result, checkpoints.committed
        autosaver = checkpoints.autosaver
        pending = autosaver.pending_names()
        written = None  # what writing the generation wrote, if this kernel wrote it
        if result is not None and committed is not None:
            written = committed.written if committed.generation == result.generation else None
        print(
            render.checkpoint_status(
                result,
                pending=autosaver.dirty,
                running=checkpoints.writers.running,
                due=autosaver.next_in(),
                written=written,
                excluded=self._excluded_now(result.saved if result is not None else []),
                carried=pending,
                cleared=self._cleared_names(),
            )
        )
        skipped = result.skipped if result is not None and result.ok else {}
        not_loaded = [name for name in pending if name not in skipped]
        if not_loaded:
            print(render.pending_sentence(not_loaded))

    def _excluded_now(self, names: list[str]) -> list[str]:
        """Which of *names* the configuration and this notebook's settings exclude now."""
        settings = self.checkpoints.notebook_settings()
        exclude = [*self.kernel.exclude, *settings.get("exclude", [])]
        include = settings.get("include", [])
        return [
            name
            for name in names
            if namespace.matches_any(name, exclude) and not namespace.matches_any(name, include)
        ]

    def _cleared_names(self) -> list[str]:
        """The user's variables that still hold what they held at ``%persist clear``."""
        assert self.shell is not None
        user_ns, hidden = self.shell.user_ns, self.shell.user_ns_hidden
        return [
            name
            for name in self.checkpoints.autosaver.cleared_values.names(user_ns)
            if not namespace.is_internal(name, user_ns[name], hidden)
        ]

    def _save(self, args: list[str]) -> None:
        self._no_args(args, "save")
        result = self._checkpoint_now()
        if result is not None and result.ok:
            state = "unchanged" if result.unchanged else "written"
            print(
                f"Checkpoint {result.generation} {state}: {len(result.saved)} variables, "
                f"{render.human_size(result.size)} ({render.human_size(result.written)} written)."
            )
            for name, reason in result.skipped.items():
                print(f"  skipped {name}: {reason}")
            upload = self.checkpoints.last_upload or {}
            if self.checkpoints.autosaver.upload_failing and upload.get("error"):
                print(
                    f"  not in the bucket yet: {upload['error']}; it is kept on this machine "
                    "and uploaded once the bucket answers."
                )
        else:
            error = result.error if result is not None else "no result"
            print(f"The checkpoint failed: {error}. The previous checkpoint is unchanged.")

    def _checkpoint_now(self, command: str = "save") -> checkpoint.CheckpointResult | None:
        return self.checkpoints.save_now(covers_running_cell=self._ends_cell(command))

    def _looks_only(self, command: str) -> None:
        """A cell that is ``%persist <command>`` alone changes nothing: its end is no
        change to checkpoint (so that ``%persist`` does not make itself pending)."""
        if autosave.only_command(self._cell_code(), command):
            self.checkpoints.autosaver.read_only()

    def _cell_code(self) -> str:
        parent = self.kernel.get_parent()
        code = parent.get("content", {}).get("code", "") if isinstance(parent, dict) else ""
        return str(code)

    def _ends_cell(self, command: str) -> bool:
        """Is ``%persist <command>`` the last line of the running cell?"""
        return autosave.ends_cell(self._cell_code(), command)

    def _history(self, args: list[str]) -> None:
        self._no_args(args, "history")
        self._looks_only("history")
        rows = restore.history(self.checkpoints.session)
        print(render.history_table(rows) if rows else "No checkpoints yet.")

    def _restore(self, args: list[str], source: str | None = None) -> None:
        generation = int(args.pop(0)) if args and args[0].isdigit() else None
        session = self.checkpoints.session
        if source is not None:
            if len(source) >= 2 and source[0] == source[-1] and source[0] in "'\"":
                source = source[1:-1]  # IPython hands quoted arguments over with their quotes
            session = source_session(self.kernel.checkpoint_dir, source, os.getcwd())
        values, rep = restore.load_generation(session, generation, args or None)
        if args:
            values = {name: values[name] for name in args if name in values}
        assert self.shell is not None
        self.shell.user_ns.update(values)
        self.checkpoints.autosaver.carry(values)  # loaded: no longer pending
        print(
            f"Restored {len(values)} variable(s) from generation {rep.generation} "
            f"({render.when(rep.created)}): {render.short_list(sorted(values))}"
        )
        for name, reason in rep.skipped.items():
            if not args or name in args:
                print(f"  not restored {name}: {reason}")

    def _exclude(self, args: list[str]) -> None:
        if not args:
            raise UsageError("%persist exclude needs names or globs")
        settings = dict(self.checkpoints.notebook_settings())
        exclude = [p for p in settings.get("exclude", []) if p not in args] + args
        include = [p for p in settings.get("include", []) if p not in args]
        new = {**settings, "exclude": exclude, "include": include}
        self.checkpoints.update_notebook_settings(new)
        print(f"Not saved from now on, in this notebook: {', '.join(exclude)}")

    def _include(self, args: list[str]) -> None:
        if not args:
            raise UsageError("%persist include needs names or globs")
        settings = dict(self.checkpoints.notebook_settings())
        exclude = [p for p in settings.get("exclude", []) if p not in args]
        include = [p for p in settings.get("include", []) if p not in args] + args
        new = {**settings, "exclude": exclude, "include": include}
        self.checkpoints.update_notebook_settings(new)
        print(f"Saved again from now on: {', '.join(args)}")

    def _off(self, args: list[str]) -> None:
        self._no_args(args, "off")
        self.kernel.autosave = False
        print("Automatic checkpoints are off in this kernel; %persist save still works.")

    def _on(self, args: list[str]) -> None:
        self._no_args(args, "on")
        self.kernel.autosave = True
        print("Automatic checkpoints are on.")

    def _clear(self, args: list[str]) -> None:
        self._no_args(args, "clear")
        self.checkpoints.clear(covers_running_cell=self._ends_cell("clear"))
        print(
            "Checkpoints of this notebook cleared: restart the kernel to start clean. "
            "Cells you run from now on are checkpointed again."
        )

    def _export(self, args: list[str]) -> None:
        from . import exchange

        if not args:
            raise UsageError("%persist export needs a path")
        path, names = args[0], args[1:]
        result = self._checkpoint_now("export")
        if result is None or not result.ok:
            error = result.error if result is not None else "no result"
            raise CheckpointFailed(f"the checkpoint to export could not be written ({error})")
        exported = exchange.export_generation(self.checkpoints.session, path, None, names or None)
        print(render.export_text(exported.to_dict()))

    def _import(self, args: list[str]) -> None:
        from . import exchange

        if len(args) != 1:
            raise UsageError("%persist import takes one path")
        assert self.shell is not None
        imported = exchange.import_file(args[0], self.shell.user_ns)
        print(
            f"Imported {len(imported.imported)} variable(s) from {args[0]} (this ran the file's "
            f"code, as loading any pickle does): {render.short_list(sorted(imported.imported))}"
        )

    def _rerun(self, args: list[str]) -> None:
        if not args:
            raise UsageError("%persist rerun needs the names of variables not restored")
        report = self.kernel.restore_report
        cells = report.cells if report is not None else {}
        lost = report.skipped if report is not None else {}
        missing = [name for name in args if name not in cells or name not in lost]
        if missing:
            raise UsageError(
                f"no cell is known that assigned {', '.join(missing)}: only variables the "
                "last restore did not bring back can be re-made this way"
            )
        assert self.shell is not None
        for source in dict.fromkeys(cells[name] for name in args):
            print(f"Running again: {render.cell_line(source)}", flush=True)
            result = self.shell.run_cell(source, store_history=False)
            if not result.success:
                raise UsageError("the cell failed; the variables after it were not re-made")
