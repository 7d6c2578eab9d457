"""``%persist``: a thin shell over the kernel's checkpoint policy and the store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from . import report

if TYPE_CHECKING:
    from .kernel import PersistentKernel


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
        choices=["status", "save", "clear"],
        help="""status (default): the last checkpoint (when, generation, size, what was
        saved and skipped, why) and whether one is pending.
        save: checkpoint now; returns once the checkpoint is committed.
        clear: forget this notebook's checkpoints, so the next start is clean.""",
    )
    @line_magic
    def persist(self, line: str) -> None:
        """Show or control this notebook's checkpoints."""
        args = parse_argstring(self.persist, line)
        getattr(self, f"_{args.command}")()

    def _status(self) -> None:
        kernel = self.kernel
        kernel.wait_for_writer(timeout=0)
        print(f"Session: {kernel.session_key}")
        print(
            report.checkpoint_status(
                kernel.last_result, pending=kernel._dirty, running=kernel._writer is not None
            )
        )

    def _save(self) -> None:
        kernel = self.kernel
        kernel.wait_for_writer()
        writer = kernel.start_checkpoint()
        if not writer.done:
            kernel.wait_for_writer()
        # This cell's own changes are in the checkpoint just written.
        kernel._skip_dirty_once = True
        result = kernel.last_result
        if result is not None and result.ok:
            state = "unchanged" if result.unchanged else "written"
            print(
                f"Checkpoint {result.generation} {state}: {len(result.saved)} variables, "
                f"{report.human_size(result.size)} ({report.human_size(result.written)} written)."
            )
            for name, reason in result.skipped.items():
                print(f"  skipped {name}: {reason}")
        else:
            error = result.error if result is not None else "no result"
            print(f"The checkpoint failed: {error}. The previous checkpoint is unchanged.")

    def _clear(self) -> None:
        kernel = self.kernel
        kernel.wait_for_writer()
        session = kernel.session_store
        with session.locked(timeout=60):
            session.clear()
        kernel._dirty = False
        kernel._skip_dirty_once = True
        kernel._carried = []
        kernel.last_result = None
        print(
            "Checkpoints of this notebook cleared: restart the kernel to start clean. "
            "Cells you run from now on are checkpointed again."
        )
