"""Classes saved means classes restorable: notebook classes whose attributes hold
their own subclasses (a registry filled by ``__init_subclass__``), and classes of
a module beside the notebook that its file no longer defines.

The serializer's half writes payloads in one interpreter and loads them in the
``__main__`` of another that never defined the classes; the kernel's half
saves in a real kernel, restarts it, and checks that ``%persist``, the restore
report, ``persistent-kernel show`` and ``export`` agree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from .harness import Kernel, KernelHarness
from .test_serializer import LOAD_INTO_MAIN, WRITE, run_python

REGISTRIES = (
    """
    import abc, json, pickle, sys
    from persistent_kernel.serializer import serialize

    class Base:
        registry = []
        def __init_subclass__(cls, **kw):
            super().__init_subclass__(**kw)
            Base.registry.append(cls)
        def hello(self):
            return "base"

    class A(Base):
        def hello(self):
            return "a:" + super().hello()

    class B(A):
        pass

    a = A()
    b = B()

    class Plugin(abc.ABC):
        plugins = {}
        def __init_subclass__(cls, **kw):
            super().__init_subclass__(**kw)
            Plugin.plugins[cls.__name__] = cls
        @abc.abstractmethod
        def run(self): ...

    class Loud(Plugin):
        def run(self):
            return "LOUD"

    loud = Loud()
    # the instances first: their classes are reached before the bases that list them
    ns = {"b": b, "loud": loud, "a": a, "Base": Base, "A": A, "B": B, "Plugin": Plugin,
          "Loud": Loud}
"""
    + WRITE
)


def test_subclass_registries_come_back_by_value(tmp_path: Path) -> None:
    """A list registry and a dict registry (of an ABC), filled by
    ``__init_subclass__``: saved by value, they hold the restored subclasses once
    each, instances are of those classes, and the hook works again after."""
    payloads = str(tmp_path / "registry.pkl")
    written = run_python(REGISTRIES, payloads, cwd=tmp_path)
    assert written["skipped"] == {}
    assert ["A", "B", "Base", "a", "b"] in written["groups"]
    assert ["Loud", "Plugin", "loud"] in written["groups"]
    loaded = run_python(
        LOAD_INTO_MAIN
        + """
    import json
    out = {
        "registry": [c.__name__ for c in Base.registry],
        "same": [Base.registry[0] is A, Base.registry[1] is B, type(a) in Base.registry,
                 isinstance(a, A), isinstance(b, A), type(b) is B],
        "methods": [a.hello(), b.hello(), loud.run()],
        "plugins": sorted(Plugin.plugins),
        "plugin_same": [Plugin.plugins["Loud"] is Loud, isinstance(loud, Plugin)],
    }
    class C(Base):
        pass
    class Quiet(Plugin):
        def run(self):
            return "quiet"
    out["after"] = [[c.__name__ for c in Base.registry], sorted(Plugin.plugins)]
    try:
        Plugin()
    except TypeError:
        out["abstract"] = True
    print(json.dumps(out))
    """,
        payloads,
        cwd=tmp_path,
    )
    assert loaded["registry"] == ["A", "B"]
    assert loaded["same"] == [True] * 6
    assert loaded["methods"] == ["a:base", "a:base", "LOUD"]
    assert loaded["plugins"] == ["Loud"]
    assert loaded["plugin_same"] == [True, True]
    assert loaded["after"] == [["A", "B", "C"], ["Loud", "Quiet"]]
    assert loaded["abstract"] is True


GLOBAL_REGISTRY = (
    """
    import json, pickle, sys
    from persistent_kernel.serializer import serialize

    KINDS = {}

    class Handler:
        def __init_subclass__(cls, kind, **kw):
            super().__init_subclass__(**kw)
            KINDS[kind] = cls

    class Csv(Handler, kind="csv"):
        pass

    class Tsv(Csv, kind="tsv"):
        pass

    ns = {"KINDS": KINDS, "Handler": Handler, "Csv": Csv, "Tsv": Tsv, "h": Tsv()}
"""
    + WRITE
)


def test_a_hook_filling_a_global_registry_does_not_run_on_load(tmp_path: Path) -> None:
    """A hook that needs a class keyword and fills a global dict: loading makes the
    classes without running it (it would fail, and would find no ``KINDS``), and
    it is in place after."""
    payloads = str(tmp_path / "global.pkl")
    assert run_python(GLOBAL_REGISTRY, payloads, cwd=tmp_path)["skipped"] == {}
    loaded = run_python(
        LOAD_INTO_MAIN
        + """
    import json
    out = [sorted(KINDS), KINDS["tsv"] is Tsv, type(h) is Tsv, issubclass(Tsv, Handler)]
    class Json(Handler, kind="json"):
        pass
    out.append(sorted(KINDS))
    print(json.dumps(out))
    """,
        payloads,
        cwd=tmp_path,
    )
    assert loaded == [["csv", "tsv"], True, True, True, ["csv", "json", "tsv"]]


SINGLETON = (
    """
    import json, pickle, sys
    from persistent_kernel.serializer import serialize

    class Config:
        def __init__(self, level):
            self.level = level

    Config.default = Config(3)
    ns = {"Config": Config}
"""
    + WRITE
)


def test_a_class_holding_its_own_instance_comes_back(tmp_path: Path) -> None:
    """``Config.default = Config(3)``: the instance in the class's body is made
    once the class exists, not saved by a name a fresh ``__main__`` lacks."""
    payloads = str(tmp_path / "singleton.pkl")
    assert run_python(SINGLETON, payloads, cwd=tmp_path)["skipped"] == {}
    loaded = run_python(
        LOAD_INTO_MAIN
        + """
    import json
    print(json.dumps([Config.default.level, type(Config.default) is Config]))
    """,
        payloads,
        cwd=tmp_path,
    )
    assert loaded == [3, True]


GENERIC_CHAIN = (
    """
    import json, pickle, sys, typing
    from persistent_kernel.serializer import serialize

    T = typing.TypeVar("T")

    class Box(typing.Generic[T]):
        pass

    class IntBox(Box[int]):
        pass

    class Sub(IntBox):
        pass

    ns = {"Sub": Sub, "s": Sub()}
"""
    + WRITE
)


def test_a_subclass_of_a_parameterised_generic_keeps_its_bases(tmp_path: Path) -> None:
    """``Sub(IntBox)``, ``IntBox(Box[int])``: Sub is rebuilt on its own bases, not
    on the ``Box[int]`` it inherits ``__orig_bases__`` from."""
    payloads = str(tmp_path / "generic.pkl")
    assert run_python(GENERIC_CHAIN, payloads, cwd=tmp_path)["skipped"] == {}
    loaded = run_python(
        LOAD_INTO_MAIN
        + """
    import json
    print(json.dumps([c.__name__ for c in Sub.__mro__] + [isinstance(s, Sub.__mro__[1])]))
    """,
        payloads,
        cwd=tmp_path,
    )
    assert loaded == ["Sub", "IntBox", "Box", "Generic", "object", True]


MODULE = """
    import functools

    class Shape:
        sides = 0
        def describe(self):
            return f"{type(self).__name__} with {self.sides} sides"

    class Square(Shape):
        sides = 4
        def area(self, side):
            return side * side * SCALE

    def twice(x):
        return 2 * x * SCALE

    SCALE = 1
"""

#: The module without ``Square`` and ``twice``.
EDITED = """
    class Shape:
        sides = 0
        def describe(self):
            return f"{type(self).__name__} with {self.sides} sides"

    SCALE = 1
"""

STALE = (
    """
    import importlib, json, os, pickle, sys
    sys.path.insert(0, os.getcwd())
    import shapes
    from persistent_kernel.serializer import serialize

    sq = shapes.Square()
    Square = shapes.Square
    fn = shapes.twice
    shape = shapes.Shape()
    with open("shapes.py", "w") as f:
        f.write(sys.argv[2])
    if sys.argv[3] == "reload":  # a reload keeps the names the file no longer binds
        importlib.reload(shapes)
        assert shapes.Square is Square
    if sys.argv[3] == "remove":
        os.remove("shapes.py")
    ns = {"sq": sq, "Square": Square, "fn": fn, "shape": shape}
"""
    + WRITE
)


@pytest.mark.parametrize("how", ["edit", "reload", "remove"])
def test_a_class_its_module_no_longer_defines_comes_back_by_value(tmp_path: Path, how: str) -> None:
    """A class and a function edited out of a module beside the notebook (the
    module not reloaded, or reloaded), or whose module's file was removed:
    saved by value with their methods, they load where the module lacks them;
    what the module still defines stays a reference to it."""
    (tmp_path / "shapes.py").write_text(textwrap.dedent(MODULE))
    payloads = str(tmp_path / "stale.pkl")
    written = run_python(STALE, payloads, textwrap.dedent(EDITED), how, cwd=tmp_path)
    assert written["skipped"] == {}
    # Shape is still defined by the edited file: by name; by value once the file is gone
    # (or reloaded, as the instance's class is the one from before the reload)
    assert written["pickler"]["shape"] == ("pickle" if how == "edit" else "dill")
    assert written["pickler"]["sq"] == "dill"
    assert any({"Square", "sq"} <= set(group) for group in written["groups"])
    loaded = run_python(
        """
    import os, sys
    sys.path.insert(0, os.getcwd())
    """
        + LOAD_INTO_MAIN
        + """
    import json
    print(json.dumps({
        "calls": [sq.describe(), sq.area(3), fn(5)],
        "same": [type(sq) is Square, isinstance(sq, Square), sq.sides],
        "shape": type(shape).__module__,
    }))
    """,
        payloads,
        cwd=tmp_path,
    )
    assert loaded["calls"] == ["Square with 4 sides", 9, 10]
    assert loaded["same"] == [True, True, 4]
    assert loaded["shape"] == "shapes"


def test_the_kernel_parses_its_variables_modules_before_a_writer_forks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``select`` (run in the kernel) finds out which files no longer define the
    classes of the variables, so each forked writer inherits the parse."""
    from persistent_kernel import namespace, reducers

    (tmp_path / "nearby.py").write_text("class Near:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import nearby

    monkeypatch.setattr(reducers, "_BOUND", {})
    monkeypatch.setattr(reducers, "_SOURCE_OF", {})
    try:
        to_save, _ = namespace.select({"n": nearby.Near(), "m": nearby.Near}, {})
        assert set(to_save) == {"n", "m"}
        (path,) = reducers._BOUND
        assert Path(path).name == "nearby.py" and reducers._BOUND[path][2] == frozenset({"Near"})
    finally:
        sys.modules.pop("nearby", None)


METACLASS = (
    """
    import json, os, pickle, sys
    sys.path.insert(0, os.getcwd())
    import tagged
    from persistent_kernel.serializer import serialize

    t = tagged.Tagged()
    node = tagged.Node()
    with open("tagged.py", "w") as f:
        f.write("# emptied\\n")
    ns = {"t": t, "node": node, "keep": [1, 2]}
"""
    + WRITE
)


TAGGED = """
class Meta(type):
    pass

class Tagged(metaclass=Meta):
    pass

class Node:
    def make(self, kind=None):
        return kind

Node.make.__defaults__ = (Node,)  # a method that holds its own class
"""


def test_a_lost_class_that_cannot_go_by_value_is_not_saved(tmp_path: Path) -> None:
    """A class of its own metaclass, or one that its own method holds, gone from its
    file: not reported saved, with the reason; the rest is saved."""
    (tmp_path / "tagged.py").write_text(TAGGED)
    written = run_python(METACLASS, str(tmp_path / "meta.pkl"), cwd=tmp_path)
    assert set(written["skipped"]) == {"t", "node"}
    assert "tagged.py no longer defines Tagged" in written["skipped"]["t"]
    assert "tagged.py no longer defines Node" in written["skipped"]["node"]
    assert written["groups"] == [["keep"]]


# -- a real kernel -------------------------------------------------------------------------

NOW = ["--PersistentKernel.checkpoint_interval=0"]

PLUGINS = """
class Base:
    registry = []
    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        Base.registry.append(cls)

class A(Base):
    def who(self):
        return "A"

class Named:
    by_name = {}
    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        Named.by_name[cls.__name__] = cls

class P(Named):
    pass

a = A()
p = P()
"""

CHECK_PLUGINS = (
    "print([c.__name__ for c in Base.registry], isinstance(a, A), type(a) in Base.registry,"
    " a.who(), Named.by_name == {'P': P}, type(p) is P)"
)


def _state(kernel: Kernel, expression: str) -> Any:
    """*expression* about the kernel object ``_k``, as JSON, from a cell binding nothing."""
    code = f"print(__import__('json').dumps((lambda _k: {expression})(get_ipython().kernel)))"
    return json.loads(kernel.run(code).check().stdout.strip().splitlines()[-1])


def _cli(kernels: KernelHarness, *args: str) -> Any:
    cli = Path(sys.executable).with_name("persistent-kernel")
    root = str(kernels.root)
    proc = subprocess.run(
        [str(cli), *args, "--json", "--checkpoint-dir", root],
        cwd=kernels.cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={**os.environ, "PYTHONPATH": str(kernels.cwd)},
    )
    return json.loads(proc.stdout)


def _shown(kernels: KernelHarness) -> dict[str, str]:
    rows = _cli(kernels, "show", "notebook.ipynb")["variables"]
    return {row["name"]: row["status"] for row in rows}


def test_a_plugin_registry_survives_a_restart(kernels: KernelHarness, tmp_path: Path) -> None:
    kernel = kernels.start(args=NOW)
    kernel.run(PLUGINS).check()
    kernel.run("%persist save").check()
    saved = _state(kernel, "_k.checkpointer.last_result.saved")
    assert {"Base", "A", "a", "Named", "P", "p"} <= set(saved)
    assert _state(kernel, "_k.checkpointer.last_result.skipped") == {}
    assert "could only be saved by name" not in kernel.run("%persist").check().text
    assert {n: s for n, s in _shown(kernels).items() if s != "saved"} == {}
    kernel.restart()
    out = kernel.run(CHECK_PLUGINS).check()
    assert "['A'] True True A True True" in out.stdout
    assert "restored 6 variables" in out.text
    assert _state(kernel, "_k.restore_report.skipped") == {}
    # the hook is back: a new subclass registers, once
    kernel.run("class B(Base):\n    pass").check()
    assert kernel.value("[c.__name__ for c in Base.registry]") == "['A', 'B']"
    written = _cli(kernels, "export", "notebook.ipynb", str(tmp_path / "state.pkl"))
    assert written["skipped"] == {}
    assert {"Base", "A", "a", "Named", "P", "p"} <= set(written["written"])


def test_a_class_edited_out_of_its_module_survives_a_restart(kernels: KernelHarness) -> None:
    """One module edited, another removed: their classes and functions come back by
    value; the removed module itself is not saved, and every surface says why."""
    (kernels.cwd / "shapes.py").write_text(textwrap.dedent(MODULE))
    (kernels.cwd / "gone.py").write_text(textwrap.dedent(MODULE))
    kernel = kernels.start(args=NOW)
    kernel.run("import shapes, gone\nsq = shapes.Square()\nfn = shapes.twice").check()
    kernel.run("g = gone.Square()").check()
    (kernels.cwd / "shapes.py").write_text(textwrap.dedent(EDITED))
    (kernels.cwd / "gone.py").unlink()
    kernel.run("kept = 1").check()
    kernel.run("%persist save").check()
    skipped = _state(kernel, "_k.checkpointer.last_result.skipped")
    assert set(skipped) == {"gone"} and "gone.py is gone" in skipped["gone"]
    assert "gone.py is gone" in kernel.run("%persist").check().text
    shown = _shown(kernels)
    assert {"sq", "fn", "shapes", "kept", "g"} <= set(shown)
    assert {n: s for n, s in shown.items() if s != "saved"} == {"gone": "skipped"}
    kernel.restart()
    out = kernel.run(
        "print(sq.describe(), sq.area(3), fn(5), hasattr(shapes, 'Square'), g.area(2))"
    )
    assert "Square with 4 sides 9 10 False 4" in out.check().stdout
    assert "gone.py is gone" in out.text
    assert list(_state(kernel, "_k.restore_report.skipped")) == ["gone"]


def test_a_lost_class_that_cannot_go_by_value_is_named_on_every_surface(
    kernels: KernelHarness, tmp_path: Path
) -> None:
    """Not saved, and said so with the same reason by ``%persist``, ``show``, the
    restore report and ``export``; the rest comes back."""
    (kernels.cwd / "tagged.py").write_text(
        "class Meta(type):\n    pass\n\nclass Tagged(metaclass=Meta):\n    pass\n"
    )
    kernel = kernels.start(args=NOW)
    kernel.run("import tagged\nt = tagged.Tagged()\nkeep = [1, 2]").check()
    (kernels.cwd / "tagged.py").write_text("# emptied\n")
    kernel.run("%persist save").check()
    reason = "tagged.py no longer defines Tagged"
    assert reason in _state(kernel, "_k.checkpointer.last_result.skipped")["t"]
    assert reason in kernel.run("%persist").check().text
    rows = {row["name"]: row for row in _cli(kernels, "show", "notebook.ipynb")["variables"]}
    assert rows["t"]["status"] == "skipped" and reason in rows["t"]["reason"]
    assert rows["keep"]["status"] == "saved"
    written = _cli(kernels, "export", "notebook.ipynb", str(tmp_path / "state.pkl"))
    assert "t" not in written["written"] and "keep" in written["written"]
    kernel.restart()
    out = kernel.run("print(keep, 't' in dir())").check()
    assert "[1, 2] False" in out.stdout
    assert reason in out.text  # the restore report names it, with the reason
