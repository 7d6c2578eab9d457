"""The application that launches :class:`~persistent_kernel.kernel.PersistentKernel`."""

from __future__ import annotations

from typing import Any

from ipykernel.kernelapp import IPKernelApp
from traitlets import List, Type, Unicode, default

from .kernel import PersistentKernel
from .kernelconfig import CONFIG_FILES


class PersistentKernelApp(IPKernelApp):
    """IPKernelApp that runs the persistent kernel and its final checkpoint."""

    name = "persistent-kernel"
    # Listed so that command-line options such as --PersistentKernel.exclude=[...]
    # are parsed with the trait's own type (and shown by --help-all).
    classes = [*IPKernelApp.classes, PersistentKernel]  # noqa: RUF012

    kernel_class = Type(
        "persistent_kernel.kernel.PersistentKernel",
        klass="ipykernel.kernelbase.Kernel",
        help="The kernel class to run.",
    ).tag(config=True)

    config_files = List(Unicode())

    @default("config_files")
    def _config_files_default(self) -> list[str]:
        # An app with its own name reads only <name>_config.py. Users configure
        # kernels in ipython_kernel_config.py, so read that first, then ours.
        return list(CONFIG_FILES)

    def start(self) -> Any:
        if self.subapp is not None:
            return super().start()
        try:
            result = super().start()
        finally:
            if getattr(self, "kernel", None) is not None:
                self.kernel.final_checkpoint()
        # Only after a clean stop: an exception leaves through Python's usual exit.
        self.kernel.prepare_exit()
        return result


main = PersistentKernelApp.launch_instance
