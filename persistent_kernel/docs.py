"""The configuration reference (docs/configuration.md), generated from the traits' help.

``python -m persistent_kernel.docs`` prints the table; a test checks that the
docs hold exactly this text, so the reference cannot drift from the code.
"""

from __future__ import annotations

from .kernel import PersistentKernel


def _default(name: str, trait: object) -> str:
    if name == "checkpoint_dir":
        return "`<jupyter data dir>/persistent_kernel`"
    return f"`{trait.default_value_repr()}`"  # type: ignore[attr-defined]


def config_table() -> str:
    """Markdown rows: option, default, help (whitespace folded)."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for name, trait in sorted(PersistentKernel.class_own_traits(config=True).items()):
        text = " ".join(str(trait.help).split()).replace("|", "\\|")
        rows.append(f"| `{name}` | {_default(name, trait)} | {text} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(config_table())
