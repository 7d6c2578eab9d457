"""The Linux userfaultfd interface: system call numbers, ioctls, flags.

Shared by the write tracker (:mod:`.pagewrites`), lazy restore
(:mod:`.lazypages`) and the page server (:mod:`.pageserver`, which imports
nothing else of the package's). Values are those of ``linux/userfaultfd.h``
and ``linux/fs.h``.
"""

from __future__ import annotations

import ctypes
import platform
import sys

#: ``userfaultfd`` system call numbers.
SYSCALL = {"x86_64": 323, "aarch64": 282}
API = 0xAA
USER_MODE_ONLY = 1
FEATURE_EVENT_FORK = 1 << 1
FEATURE_WP_ASYNC = 1 << 15
MODE_MISSING = 1 << 0
MODE_WP = 1 << 1
COPY_MODE_WP = 1 << 1
EVENT_PAGEFAULT = 0x12
EVENT_FORK = 0x13
MSG_SIZE = 32  # sizeof(struct uffd_msg)


def iowr(kind: int, number: int, size: int) -> int:
    """An ``_IOWR`` ioctl request number."""
    return (3 << 30) | (size << 16) | (kind << 8) | number


def ior(kind: int, number: int, size: int) -> int:
    """An ``_IOR`` ioctl request number."""
    return (2 << 30) | (size << 16) | (kind << 8) | number


UFFDIO_API = iowr(0xAA, 0x3F, 24)
UFFDIO_REGISTER = iowr(0xAA, 0x00, 32)
UFFDIO_UNREGISTER = ior(0xAA, 0x01, 16)
UFFDIO_WAKE = ior(0xAA, 0x02, 16)
UFFDIO_COPY = iowr(0xAA, 0x03, 40)
UFFDIO_WRITEPROTECT = iowr(0xAA, 0x06, 24)
PAGEMAP_SCAN = iowr(ord("f"), 16, 96)


def libc() -> tuple[ctypes.CDLL, int] | None:
    """The C library, set up for ``syscall`` and ``ioctl``, and this machine's
    ``userfaultfd`` system call number; None off Linux x86-64 and arm64."""
    number = SYSCALL.get(platform.machine())
    if number is None or not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.syscall.restype = ctypes.c_long
        lib.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
        lib.ioctl.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return lib, number
