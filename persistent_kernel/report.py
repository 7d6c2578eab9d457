"""Moved to :mod:`persistent_kernel.render`; kept so that old imports work."""

from .render import (
    START_CLEAN,
    checkpoint_status,
    failure_sentence,
    human_size,
    restore_html,
    restore_summary,
    restore_text,
    short_list,
    when,
)

__all__ = [
    "START_CLEAN",
    "checkpoint_status",
    "failure_sentence",
    "human_size",
    "restore_html",
    "restore_summary",
    "restore_text",
    "short_list",
    "when",
]
