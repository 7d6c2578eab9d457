"""The README and the docs: the generated reference, the size, the links."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from persistent_kernel.docs import config_table

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
#: The README is the front page: what the kernel is and how to use it; the rest is in docs/.
README_MAX_BYTES = 12 * 1024
#: Every Markdown file whose relative links must resolve.
DOCUMENTS = sorted(
    [ROOT / "README.md", ROOT / "benchmarks" / "latest.md", *(ROOT / "docs").glob("*.md")]
)

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", flags=re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", flags=re.S)
_INLINE_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", flags=re.M)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", flags=re.M)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:|^//")


def _without_code(text: str) -> str:
    """*text* without fenced code blocks and code spans, where brackets are not links."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def relative_links(text: str) -> list[str]:
    """The targets of the inline and reference links of *text* that stay in the repository."""
    prose = _without_code(text)
    targets = _INLINE_LINK.findall(prose) + _REFERENCE_LINK.findall(prose)
    return [t for t in targets if not _SCHEME.match(t)]


def anchors(text: str) -> set[str]:
    """The fragment GitHub gives each heading of *text* (``#the-two-commands``)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        plain = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
        slug = re.sub(r"[^\w\- ]", "", plain.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_configuration_reference_is_generated_from_the_traits() -> None:
    """docs/configuration.md holds exactly what ``python -m persistent_kernel.docs``
    prints, and the README links it."""
    assert config_table() in (ROOT / "docs" / "configuration.md").read_text()
    assert "(docs/configuration.md)" in README


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"Run the tests.*?```bash\n(.+?)\n```", README, flags=re.S)
    assert command is not None
    assert command.group(1).strip() in ci


def test_readme_is_at_most_12_kb() -> None:
    size = len((ROOT / "README.md").read_bytes())  # what `wc -c README.md` counts
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes, more than {README_MAX_BYTES}: move detail to docs/"
    )


def test_there_are_docs_to_check() -> None:
    names = {_name(p) for p in DOCUMENTS}
    assert {"README.md", "docs/design.md", "docs/clients.md", "docs/buckets.md"} <= names
    assert relative_links(README), "the README links its docs"


@pytest.mark.parametrize("document", DOCUMENTS, ids=_name)
def test_relative_links_point_at_existing_files(document: Path) -> None:
    broken = []
    for target in relative_links(document.read_text()):
        path = unquote(target.partition("#")[0])
        if not path:
            continue  # a fragment of this file: see the anchor test
        base = ROOT if path.startswith("/") else document.parent
        if not (base / path.lstrip("/")).exists():
            broken.append(target)
    assert broken == [], f"{_name(document)} links to files that do not exist: {broken}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=_name)
def test_links_to_headings_name_existing_headings(document: Path) -> None:
    broken = []
    for target in relative_links(document.read_text()):
        path, _, fragment = target.partition("#")
        if not fragment:
            continue
        file = document if not path else document.parent / unquote(path)
        if file.suffix != ".md" or not file.is_file():
            continue  # a missing file is the test above's
        if unquote(fragment) not in anchors(file.read_text()):
            broken.append(target)
    assert broken == [], f"{_name(document)} links to headings that do not exist: {broken}"


def test_link_and_anchor_extraction() -> None:
    text = (
        "# The two commands\n\nSee [a](docs/a.md#x), [b](https://example.org/b.md), "
        "`[not](a-link.md)` and [c](#the-two-commands).\n\n"
        "```\n[no](link.md)\n# not a heading\n```\n\n[ref]: docs/ref.md\n## Per client\n"
    )
    assert relative_links(text) == ["docs/a.md#x", "#the-two-commands", "docs/ref.md"]
    assert anchors(text) == {"the-two-commands", "per-client"}
    assert anchors("## `%persist`, in a notebook (S3)\n") == {"persist-in-a-notebook-s3"}
