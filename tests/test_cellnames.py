"""Which names a cell may use: a pure function, tested in process."""

from __future__ import annotations

from typing import Any

import pytest

from persistent_kernel.cellnames import names_used


def notebook(code: str) -> dict[str, Any]:
    """A namespace as a notebook leaves it after running *code*."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(code, "<cell>", "exec"), namespace)
    return namespace


def needs(code: str, namespace: dict[str, Any] | None = None) -> set[str] | None:
    return names_used(code, namespace if namespace is not None else {"__name__": "__main__"})


def test_the_names_a_cell_reads_and_binds() -> None:
    found = needs("print(small)\nx = big + 1\ndel gone")
    assert found is not None and {"print", "small", "x", "big", "gone"} <= found
    assert "other" not in found


def test_nested_code_counts_but_locals_of_functions_do_not() -> None:
    found = needs(
        "def f(local):\n    return local + inner\n"
        "class C:\n    attr = in_class\n"
        "g = lambda: in_lambda\n"
        "h = [v for v in in_comprehension]\n"
    )
    assert found is not None
    assert {"inner", "in_class", "in_lambda", "in_comprehension", "f", "C", "g", "h"} <= found
    assert "local" not in found


def test_notebook_functions_lead_to_the_globals_they_read() -> None:
    namespace = notebook(
        "def f():\n    return g() + big\n"
        "def g():\n    return deeper\n"
        "import functools\n"
        "def deco(fn):\n    @functools.wraps(fn)\n    def inner():\n        return fn()\n"
        "    return inner\n"
        "@deco\ndef wrapped():\n    return through_wrapper\n"
        "p = functools.partial(g)\n"
    )
    found = needs("f()", namespace)
    assert found is not None and {"f", "g", "big", "deeper"} <= found
    found = needs("wrapped()", namespace)
    assert found is not None and "through_wrapper" in found
    found = needs("p()", namespace)
    assert found is not None and "deeper" in found
    # a library's function reads its own module's globals, not the notebook's
    found = needs("functools.reduce", namespace)
    assert found is not None and "deeper" not in found


def test_classes_and_instances_lead_to_their_methods_globals() -> None:
    namespace = notebook(
        "class Base:\n    def base(self):\n        return from_base\n"
        "class Model(Base):\n"
        "    def fit(self):\n        return data\n"
        "    @property\n    def prop(self):\n        return from_property\n"
        "    @staticmethod\n    def stat():\n        return from_static\n"
        "m = Model()\n"
        "bound = m.fit\n"
    )
    found = needs("m.fit()", namespace)
    assert found is not None
    assert {"data", "from_base", "from_property", "from_static"} <= found
    found = needs("bound()", namespace)
    assert found is not None and "data" in found


@pytest.mark.parametrize(
    "code",
    [
        "globals()['x']",
        "locals()",
        "vars()",
        "eval('x')",
        "exec('x = 1')",
        "dir()",
        "%who",
        "%time x",
        "!ls",
        "x?",
        "%%time\nx",
        "get_ipython().user_ns",
        "__import__('__main__').x",
        "import sys\nsys.modules['__main__'].x",
        "import __main__",
        "import sys\nsys._getframe().f_globals",
        "from os.path import *",
        "%persist save",
        "%matplotlib inline",
    ],
)
def test_where_it_cannot_know_it_says_so(code: str) -> None:
    assert needs(code) is None


def test_a_notebook_function_that_looks_names_up_makes_the_cell_wait_for_all() -> None:
    namespace = notebook("def f():\n    return globals()['big']\n")
    assert needs("f()", namespace) is None
    assert needs("print(1)", namespace) is not None


def test_a_cell_that_does_not_compile_needs_nothing() -> None:
    assert needs("def (:") == set()


def test_a_cell_that_warns_as_it_compiles_is_read_without_a_warning() -> None:
    found = needs('pattern = "\\d" + suffix')  # an invalid escape: a warning, errors here
    assert found is not None and {"pattern", "suffix"} <= found


def test_top_level_await_compiles() -> None:
    found = needs("await thing()")
    assert found is not None and "thing" in found


def test_the_kernels_transform_is_used() -> None:
    seen: list[str] = []

    def transform(code: str) -> str:
        seen.append(code)
        return "y = 1\n"

    assert names_used("anything", {}, transform) == {"y"}
    assert seen == ["anything"]


def test_following_stops_at_the_limit() -> None:
    code = "".join(f"def f{i}():\n    return f{i + 1}()\n" for i in range(50))
    namespace = notebook(code + "def f50():\n    return 0\n")
    found = names_used("f0()", namespace, limit=100)
    assert found is not None and "f50" in found
    assert names_used("f0()", namespace, limit=10) is None


def test_nothing_of_the_users_objects_runs() -> None:
    namespace = notebook(
        "class Trap:\n"
        "    def __getattribute__(self, name):\n        raise AssertionError(name)\n"
        "    @property\n    def __class__(self):\n        raise AssertionError('class')\n"
        "t = Trap()\n"
    )
    assert names_used("t.x", namespace) is not None
