"""The manifest's content model: parsed once, one error naming any malformed field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from persistent_kernel.checkpoint import write_checkpoint
from persistent_kernel.content import parse
from persistent_kernel.errors import CorruptCheckpoint
from persistent_kernel.store import Manifest, SessionStore

from .helpers import INFO


@pytest.fixture
def manifest(session: SessionStore) -> Manifest:
    import json

    shared = [1]
    values = {"a": shared, "b": shared, "n": 3, "codec": json}
    assert write_checkpoint(session, values, {"pw": "excluded"}, INFO, keep=5).ok
    return session.read_manifest(1)


def test_a_manifest_parses_into_typed_objects(manifest: Manifest) -> None:
    content = parse(manifest)
    assert set(content.variables) == {"a", "b", "n", "codec"}
    assert content.variables["codec"].module == "json" and content.size_of("codec") == 0
    group = content.group_of("a")
    assert group is not None and set(group.names) == {"a", "b"} and group is content.group_of("b")
    assert content.size_of("a") == group.size == sum(part.size for part in group.parts)
    assert group.refs()[0].hash == group.id
    assert content.skipped == {"pw": "excluded"}
    assert content.fingerprints()["codec"] == "module:json"


def set_in(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(content: dict[str, Any]) -> None:
        target = content
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


DAMAGE = {
    "groups not a list": (set_in(("groups",), {}), "groups is dict"),
    "variables missing": (set_in(("variables",), None), "variables is NoneType"),
    "group index out of range": (set_in(("variables", "n", "group"), 9), "names group 9"),
    "group index a string": (set_in(("variables", "n", "group"), "0"), "the group of variable"),
    "group and module": (set_in(("variables", "codec", "group"), 0), "not both or neither"),
    "part not listed": (set_in(("groups", 0, "parts", 0, 0), "ab" * 32), "does not list"),
    "part size wrong": (set_in(("groups", 0, "parts", 0, 1), 1), "does not list"),
    "no parts": (set_in(("groups", 0, "parts"), []), "has no parts"),
    "size not the sum": (set_in(("groups", 0, "size"), 1), "not the sum"),
    "names not strings": (set_in(("groups", 0, "names"), [1]), "an entry of the names"),
    "skipped reason not a string": (set_in(("skipped", "pw"), 3), "skipped['pw']"),
    "pickler missing": (set_in(("groups", 0, "pickler"), None), "the pickler of group 0"),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_any_malformed_field_is_one_error_naming_it(
    manifest: Manifest, damage: tuple[Callable[[dict[str, Any]], None], str]
) -> None:
    edit, words = damage
    content = copy.deepcopy(manifest.content)
    edit(content)
    with pytest.raises(CorruptCheckpoint, match="generation 1 is malformed") as exc:
        parse(replace(manifest, content=content))
    assert words in str(exc.value)
