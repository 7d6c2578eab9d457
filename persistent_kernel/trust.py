"""Moved to :mod:`persistent_kernel.store.trust`; kept so that old imports work."""

from .store.trust import (
    HOW_TO_LOAD,
    SECRET_NAME,
    Signer,
    canonical,
    check_private,
    check_private_path,
    read_private,
)

__all__ = [
    "HOW_TO_LOAD",
    "SECRET_NAME",
    "Signer",
    "canonical",
    "check_private",
    "check_private_path",
    "read_private",
]
