"""The README's configuration reference matches the traits it documents."""

from __future__ import annotations

import re
from pathlib import Path

from persistent_kernel.kernel import PersistentKernel

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _config_traits() -> dict[str, object]:
    own = PersistentKernel.class_own_traits(config=True)
    return dict(sorted(own.items()))


def test_every_option_is_documented_with_its_help() -> None:
    rows = dict(re.findall(r"^\| `(\w+)` \| (.+?) \|", README, flags=re.M))
    traits = _config_traits()
    assert set(rows) >= set(traits), set(traits) - set(rows)
    for name, trait in traits.items():
        help_text = " ".join(trait.help.split())  # type: ignore[attr-defined]
        first_sentence = help_text.split(". ")[0].replace("'", "")
        row = (
            README.split(f"| `{name}` |", 1)[1].split("\n", 1)[0].replace("`", "").replace("'", "")
        )
        assert first_sentence.replace("`", "") in " ".join(row.split()), (name, first_sentence)
        if name != "checkpoint_dir":
            default = trait.default_value_repr()  # type: ignore[attr-defined]
            assert default in rows[name].replace("`", ""), (name, default)


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    command = re.search(r"Run the tests.*?```bash\n(.+?)\n```", README, flags=re.S)
    assert command is not None
    assert command.group(1).strip() in ci
