"""The README's configuration reference matches the traits it documents."""

from __future__ import annotations

import re
from pathlib import Path

from persistent_kernel.docs import config_table

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_configuration_reference_is_generated_from_the_traits() -> None:
    """The README holds exactly what ``python -m persistent_kernel.docs`` prints."""
    assert config_table() in README


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    command = re.search(r"Run the tests.*?```bash\n(.+?)\n```", README, flags=re.S)
    assert command is not None
    assert command.group(1).strip() in ci
