# ruff: noqa: E501  (one kind per entry reads better than wrapped code strings)
"""Object kinds users keep in notebooks, each with what must hold after a restart.

To add a kind, add one :class:`Kind` to :data:`KINDS`: a name, the code a
user would run (it binds the variables), and the code that checks them after
a real kernel restart (asserts: equality *and* behaviour). The variables a
kind binds are read from its setup code (assignments, ``def``, ``class``,
``import`` at top level, names not starting with ``_``); each must be listed
as saved by ``%persist save``, be restored, and pass the check.

Names must be unique across kinds: all kinds share one kernel (a test holds
them unique). Setup code may use ``WORK`` (the kernel's working directory, a
``pathlib.Path``) to make files. ``after_shutdown`` is code the test runs
between the kernel's shutdown (after its final checkpoint) and the next
start, with ``WORK`` bound (to change a file behind the kernel's back);
``lost`` names variables that must *not* come back, each with a phrase the
reason given must contain.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from textwrap import dedent


@dataclass(frozen=True)
class Kind:
    name: str
    setup: str
    check: str
    #: variables bound by setup that must come back (default: read from setup)
    names: tuple[str, ...] = field(default=())
    after_shutdown: str = ""
    #: name -> a phrase of the reason it is not saved or not restored
    lost: dict[str, str] = field(default_factory=dict)

    def saved_names(self) -> list[str]:
        """The variables the setup binds, imports included."""
        return list(self.names) or self._bound(imports=True)

    def own_names(self) -> list[str]:
        """The variables the setup binds, less the names its imports bind
        (``np`` is bound by many kinds, and is the same module in all)."""
        return list(self.names) or self._bound(imports=False)

    def _bound(self, imports: bool) -> list[str]:
        found: list[str] = []
        for node in ast.parse(self.setup).body:
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                targets = [node.target]
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                found.append(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)) and imports:
                found.extend((a.asname or a.name).partition(".")[0] for a in node.names)
            for target in targets:
                elts = target.elts if isinstance(target, ast.Tuple) else [target]
                found.extend(t.id for t in elts if isinstance(t, ast.Name))
        return [n for n in dict.fromkeys(found) if not n.startswith("_")]


def k(
    name: str,
    setup: str,
    check: str,
    names: tuple[str, ...] = (),
    after_shutdown: str = "",
    lost: dict[str, str] | None = None,
) -> Kind:
    code = [dedent(c).strip() + "\n" for c in (setup, check, after_shutdown)]
    return Kind(name, code[0], code[1], names, code[2] if after_shutdown else "", lost or {})


KINDS: list[Kind] = [
    # -- the defects of "everything that was saved comes back as it was" ----------------
    k(
        "enum class and member",
        """
        import enum
        class Color(enum.Enum):
            RED = 1
            GREEN = 2
            def warm(self):
                return self is Color.RED
        fav_color = Color.RED
        """,
        """
        assert fav_color is Color.RED and Color(2) is Color.GREEN
        assert fav_color.warm() and not Color.GREEN.warm()
        assert isinstance(Color, enum.EnumMeta) and list(Color) == [Color.RED, Color.GREEN]
        """,
    ),
    k(
        "IntEnum",
        """
        import enum
        class Prio(enum.IntEnum):
            LOW = 1
            HIGH = 2
        prio = Prio.HIGH
        """,
        """
        assert prio is Prio.HIGH and prio == 2 and Prio.LOW < prio and sorted([prio, Prio.LOW])[0] is Prio.LOW
        """,
    ),
    k(
        "enum with __init__ and property",
        """
        import enum
        class Planet(enum.Enum):
            MERCURY = (3.303e23, 2.4397e6)
            EARTH = (5.976e24, 6.37814e6)
            def __init__(self, mass, radius):
                self.mass, self.radius = mass, radius
            @property
            def gravity(self):
                return 6.673e-11 * self.mass / self.radius**2
        """,
        """
        assert round(Planet.EARTH.gravity, 2) == 9.80 and Planet((3.303e23, 2.4397e6)) is Planet.MERCURY
        """,
    ),
    k(
        "Flag and auto",
        """
        import enum
        class Perm(enum.Flag):
            R = enum.auto()
            W = enum.auto()
            X = enum.auto()
        rw = Perm.R | Perm.W
        """,
        """
        assert rw == Perm.R | Perm.W and Perm.W in rw and Perm.X not in rw and Perm.X.value == 4
        """,
    ),
    k(
        "lru_cache function",
        """
        import functools
        @functools.lru_cache(maxsize=64)
        def fib(n):
            return n if n < 2 else fib(n - 1) + fib(n - 2)
        fib(20)
        """,
        """
        assert fib(60) == 1548008755920 and fib.cache_parameters()["maxsize"] == 64
        """,
    ),
    k(
        "functools.cache function",
        """
        import functools
        @functools.cache
        def squared(n):
            return n * n
        """,
        """
        assert squared(12) == 144 and squared.cache_info().currsize == 1
        """,
    ),
    k(
        "TypeVar and Generic class",
        """
        from typing import Generic, TypeVar
        T = TypeVar("T")
        class Box(Generic[T]):
            def __init__(self, item: T) -> None:
                self.item = item
            def get(self) -> T:
                return self.item
        boxed = Box[int](5)
        """,
        """
        import typing
        assert boxed.get() == 5 and type(boxed) is Box and Box.__parameters__ == (T,)
        assert typing.get_args(boxed.__orig_class__) == (int,) and Box[str]("x").get() == "x"
        """,
    ),
    k(
        "IPython display objects",
        """
        from IPython.display import HTML, Markdown, Image
        banner = HTML("<b>results</b>")
        notes_md = Markdown("# Title")
        PNG = bytes.fromhex(
            "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
            "1f15c4890000000d49444154789c6360000002000105e5274ded000000"
            "0049454e44ae426082"
        )
        pixel = Image(data=PNG)
        """,
        """
        assert banner._repr_html_() == "<b>results</b>" and notes_md.data == "# Title"
        assert pixel.data == PNG and pixel._repr_png_() is not None
        """,
    ),
    k(
        "deeply nested list",
        """
        deep_list = []
        _cur = deep_list
        for _ in range(10_000):
            _cur.append([])
            _cur = _cur[0]
        """,
        """
        _d, _n = deep_list, 0
        while _d:
            _d, _n = _d[0], _n + 1
        assert _n == 10_000
        """,
    ),
    k(
        "linked list of notebook nodes",
        """
        class Node:
            def __init__(self, value, next=None):
                self.value, self.next = value, next
        chain = None
        for _j in range(10_000):
            chain = Node(_j, chain)
        """,
        """
        _n, _count = chain, 0
        while _n is not None:
            _n, _count = _n.next, _count + 1
        assert _count == 10_000 and chain.value == 9_999 and type(chain) is Node
        """,
    ),
    k(
        "sympy lambdify function",
        """
        import sympy
        sx = sympy.symbols("x")
        fsym = sympy.lambdify(sx, sympy.sin(sx) + sympy.besselj(0, sx))  # numpy and scipy
        """,
        """
        import math
        import scipy.special
        assert abs(fsym(2.0) - (math.sin(2.0) + scipy.special.j0(2.0))) < 1e-12
        """,
    ),
    # -- plain Python ----------------------------------------------------------------
    k("int", "n_int = 2**100 + 7", "assert n_int == 2**100 + 7 and n_int % 7 == (2**100) % 7"),
    k(
        "float specials",
        "fl = [0.1, float('inf'), -0.0]",
        "import math; assert fl[0] == 0.1 and math.isinf(fl[1]) and math.copysign(1, fl[2]) == -1",
    ),
    k("complex", "cx = 3 + 4j", "assert abs(cx) == 5.0"),
    k(
        "str",
        "text = 'héllo wörld ✓' * 3",
        "assert text.count('✓') == 3 and text.upper().startswith('HÉ')",
    ),
    k("bytes", "raw = bytes(range(256)) * 40", "assert len(raw) == 10240 and raw[255] == 255"),
    k("bytearray", "buf = bytearray(b'abc')", "buf.append(100); assert buf == b'abcd'"),
    k(
        "list",
        "items = [1, 'two', 3.0, None]",
        "items.append(5); assert items == [1, 'two', 3.0, None, 5]",
    ),
    k(
        "tuple",
        "pair = (1, ('a', 'b'))",
        "assert pair[1][1] == 'b' and hash(pair) == hash((1, ('a', 'b')))",
    ),
    k(
        "dict",
        "config = {'lr': 0.1, 'layers': [64, 32]}",
        "config['lr'] *= 2; assert config == {'lr': 0.2, 'layers': [64, 32]}",
    ),
    k("set", "tags = {'a', 'b'}", "tags.add('c'); assert tags == {'a', 'b', 'c'}"),
    k("frozenset", "frozen = frozenset({1, 2})", "assert frozen | {3} == {1, 2, 3}"),
    k(
        "range and slice",
        "rng = range(0, 100, 7); sl = slice(1, 9, 2)",
        "assert list(rng)[3] == 21 and [0,1,2,3,4,5,6,7,8,9][sl] == [1, 3, 5, 7]",
    ),
    k(
        "None, Ellipsis, NotImplemented",
        "singletons = [None, ..., NotImplemented]",
        "assert singletons[0] is None and singletons[1] is ... and singletons[2] is NotImplemented",
    ),
    k("bool", "flag = True", "assert flag is True"),
    k(
        "dict with tuple keys",
        "grid = {(i, j): i * j for i in range(5) for j in range(5)}",
        "assert grid[(3, 4)] == 12 and len(grid) == 25",
    ),
    k(
        "self-referencing list",
        "loop = [1]; loop.append(loop)",
        "assert loop[1] is loop and loop[1][1][0] == 1",
    ),
    k(
        "two names, one list",
        "shared_one = [1, 2]; shared_two = shared_one",
        "shared_one.append(3); assert shared_two == [1, 2, 3] and shared_two is shared_one",
    ),
    k(
        "sentinel identity",
        "MISSING = object(); defaults = {'a': MISSING}",
        "assert defaults['a'] is MISSING",
    ),
    # -- the standard library -----------------------------------------------------------
    k(
        "datetime",
        "import datetime as dt; when = dt.datetime(2024, 5, 17, 13, 45, 1)",
        "assert (when + dt.timedelta(days=1)).day == 18",
    ),
    k(
        "tz-aware datetime",
        "import zoneinfo, datetime; paris = datetime.datetime(2024, 3, 31, 12, tzinfo=zoneinfo.ZoneInfo('Europe/Paris'))",
        "assert paris.utcoffset() == datetime.timedelta(hours=2) and paris.tzinfo is zoneinfo.ZoneInfo('Europe/Paris')",
    ),
    k(
        "date and timedelta",
        "import datetime; day = datetime.date(2024, 2, 28); span = datetime.timedelta(hours=30)",
        "assert day + span == datetime.date(2024, 2, 29)",
    ),
    k(
        "Decimal",
        "from decimal import Decimal; price = Decimal('19.99')",
        "assert price * 3 == Decimal('59.97')",
    ),
    k(
        "Fraction",
        "from fractions import Fraction; third = Fraction(1, 3)",
        "assert third * 3 == 1",
    ),
    k(
        "UUID",
        "import uuid; uid = uuid.UUID('12345678123456781234567812345678')",
        "assert uid.hex == '12345678123456781234567812345678' and uid.version is None",
    ),
    k(
        "pathlib.Path",
        "from pathlib import Path; data_dir = Path('/tmp/data') / 'x.csv'",
        "assert data_dir.suffix == '.csv' and data_dir.parent.name == 'data'",
    ),
    k(
        "compiled regex",
        "import re; word = re.compile(r'\\w+', re.I)",
        "assert word.findall('ab cd') == ['ab', 'cd'] and word.flags & re.I",
    ),
    k(
        "deque",
        "import collections; dq = collections.deque([1, 2, 3], maxlen=3)",
        "dq.append(4); assert list(dq) == [2, 3, 4] and dq.maxlen == 3",
    ),
    k(
        "Counter",
        "import collections; counts = collections.Counter('abracadabra')",
        "assert counts.most_common(1) == [('a', 5)]",
    ),
    k(
        "OrderedDict",
        "import collections; od = collections.OrderedDict(b=1, a=2)",
        "od.move_to_end('b'); assert list(od) == ['a', 'b']",
    ),
    k(
        "defaultdict(list)",
        "import collections; groups_dd = collections.defaultdict(list)",
        "groups_dd['x'].append(1); assert groups_dd == {'x': [1]}",
    ),
    k(
        "defaultdict with a notebook lambda",
        "import collections; zeros = collections.defaultdict(lambda: 0)",
        "zeros['a'] += 2; assert zeros['a'] == 2 and zeros['b'] == 0",
    ),
    k(
        "namedtuple class and instance",
        "import collections; Point = collections.namedtuple('Point', 'x y'); pt = Point(1, 2)",
        "assert pt.x == 1 and pt._replace(y=5) == Point(1, 5) and type(pt) is Point",
    ),
    k(
        "typing.NamedTuple",
        """
        from typing import NamedTuple
        class Row(NamedTuple):
            name: str
            score: float = 0.0
        row = Row("a")
        """,
        "assert row == Row('a', 0.0) and row._asdict() == {'name': 'a', 'score': 0.0} and type(row) is Row",
    ),
    k(
        "SimpleNamespace",
        "import types; opts = types.SimpleNamespace(epochs=3, lr=0.1)",
        "opts.epochs += 1; assert opts.epochs == 4",
    ),
    k(
        "array.array",
        "import array; arr_d = array.array('d', [1.0, 2.5])",
        "arr_d.append(3); assert arr_d.tolist() == [1.0, 2.5, 3.0]",
    ),
    k(
        "heap",
        "import heapq; heap = [5, 1, 4]; heapq.heapify(heap)",
        "heapq.heappush(heap, 0); assert heapq.heappop(heap) == 0",
    ),
    k(
        "builtin exception",
        "err = ValueError('bad value', 3)",
        "assert err.args == ('bad value', 3) and isinstance(err, ValueError)",
    ),
    # -- notebook code ---------------------------------------------------------------------
    k(
        "function seeing later rebindings",
        "RATE = 2\ndef scaled(x):\n    return x * RATE",
        "RATE = 5\nassert scaled(2) == 10",
    ),
    k("lambda", "double = lambda x: 2 * x", "assert double(21) == 42"),
    k(
        "closure with state",
        """
        def make_counter():
            count = 0
            def bump():
                nonlocal count
                count += 1
                return count
            return bump
        counter = make_counter()
        counter()
        """,
        "assert counter() == 2 and counter() == 3",
    ),
    k(
        "recursive function",
        "def fact(n):\n    return 1 if n <= 1 else n * fact(n - 1)",
        "assert fact(10) == 3628800",
    ),
    k(
        "decorated function",
        """
        import functools
        def logged(f):
            @functools.wraps(f)
            def wrapper(*a):
                return ("logged", f(*a))
            return wrapper
        @logged
        def add(a, b):
            return a + b
        """,
        "assert add(1, 2) == ('logged', 3) and add.__name__ == 'add'",
    ),
    k(
        "functools.partial of a notebook function",
        "import functools\ndef power(base, exp):\n    return base ** exp\ncube = functools.partial(power, exp=3)",
        "assert cube(2) == 8",
    ),
    k(
        "generator function",
        "def evens(n):\n    yield from range(0, n, 2)",
        "assert list(evens(7)) == [0, 2, 4, 6]",
    ),
    k(
        "class, instance and method",
        """
        class Account:
            rate = 0.05
            def __init__(self, balance):
                self.balance = balance
            def grow(self):
                self.balance *= 1 + self.rate
                return self.balance
        acct = Account(100.0)
        """,
        "assert type(acct) is Account and round(acct.grow(), 2) == 105.0 and Account(1).balance == 1",
    ),
    k(
        "class hierarchy with super()",
        """
        class Animal:
            def speak(self):
                return "..."
        class Dog(Animal):
            def speak(self):
                return "woof " + super().speak()
        rex = Dog()
        """,
        "assert rex.speak() == 'woof ...' and isinstance(rex, Animal) and Dog.__mro__[1] is Animal",
    ),
    k(
        "properties, classmethods, staticmethods",
        """
        class Temp:
            def __init__(self, c):
                self.c = c
            @property
            def f(self):
                return self.c * 9 / 5 + 32
            @classmethod
            def boiling(cls):
                return cls(100)
            @staticmethod
            def unit():
                return "C"
        room = Temp(20)
        """,
        "assert room.f == 68 and Temp.boiling().f == 212 and Temp.unit() == 'C'",
    ),
    k(
        "__slots__ class",
        """
        class Vec:
            __slots__ = ("x", "y")
            def __init__(self, x, y):
                self.x, self.y = x, y
            def norm2(self):
                return self.x**2 + self.y**2
        vec = Vec(3, 4)
        """,
        "assert vec.norm2() == 25 and not hasattr(vec, '__dict__')",
    ),
    k(
        "dataclass",
        """
        from dataclasses import dataclass, field
        @dataclass
        class Experiment:
            name: str
            scores: list = field(default_factory=list)
            def best(self):
                return max(self.scores)
        exp = Experiment("a", [0.5, 0.9])
        """,
        "assert exp == Experiment('a', [0.5, 0.9]) and exp.best() == 0.9 and Experiment('b').scores == []",
    ),
    k(
        "frozen dataclass",
        """
        import dataclasses
        @dataclasses.dataclass(frozen=True)
        class Key:
            a: int
            b: str
        key = Key(1, "x")
        """,
        "assert {key: 1}[Key(1, 'x')] == 1 and hash(key) == hash(Key(1, 'x'))",
    ),
    k(
        "abstract base class",
        """
        import abc
        class Shape(abc.ABC):
            @abc.abstractmethod
            def area(self): ...
        class Square(Shape):
            def __init__(self, s):
                self.s = s
            def area(self):
                return self.s ** 2
        sq4 = Square(4)
        """,
        """
        assert sq4.area() == 16 and isinstance(sq4, Shape)
        try:
            Shape()
        except TypeError:
            pass
        else:
            raise AssertionError("abstract class instantiated")
        """,
    ),
    k(
        "notebook exception class",
        "class DataError(Exception):\n    pass\nlast_error = DataError('row 3')",
        """
        assert isinstance(last_error, DataError) and last_error.args == ('row 3',)
        try:
            raise last_error
        except DataError:
            pass
        """,
    ),
    k(
        "custom __getstate__/__setstate__",
        """
        class Conn:
            def __init__(self, url):
                self.url, self.cache = url, {"k": 1}
            def __getstate__(self):
                return {"url": self.url}
            def __setstate__(self, state):
                self.url, self.cache = state["url"], {}
        conn = Conn("db://x")
        """,
        "assert conn.url == 'db://x' and conn.cache == {}",
    ),
    k(
        "object graph with a cycle",
        """
        class Person:
            def __init__(self, name):
                self.name, self.friends = name, []
        ann, bob = Person("ann"), Person("bob")
        ann.friends.append(bob); bob.friends.append(ann)
        """,
        "assert ann.friends[0] is bob and bob.friends[0] is ann",
    ),
    k(
        "class from a local module",
        """
        (WORK / "localmod.py").write_text("class Thing:\\n    def __init__(self, v):\\n        self.v = v\\n    def twice(self):\\n        return 2 * self.v\\n")
        import localmod
        thing = localmod.Thing(21)
        """,
        "assert thing.twice() == 42 and type(thing) is localmod.Thing",
    ),
    # -- numpy ---------------------------------------------------------------------------
    k(
        "numpy float array, writable",
        "import numpy as np; floats = np.linspace(0, 1, 100_000)",
        "floats[0] = 5; assert floats.flags.writeable and floats[0] == 5 and floats.shape == (100_000,)",
    ),
    k(
        "numpy int 2-D",
        "import numpy as np; grid2 = np.arange(12, dtype=np.int32).reshape(3, 4)",
        "assert grid2.dtype == np.int32 and grid2[2, 3] == 11 and grid2.sum(axis=0).tolist() == [12, 15, 18, 21]",
    ),
    k(
        "numpy Fortran order",
        "import numpy as np; fort = np.asfortranarray(np.arange(6.0).reshape(2, 3))",
        "assert fort.flags.f_contiguous and fort[1, 2] == 5.0",
    ),
    k(
        "numpy structured array",
        "import numpy as np; people = np.array([('ann', 31), ('bob', 25)], dtype=[('name', 'U10'), ('age', 'i4')])",
        "assert people['age'].mean() == 28 and people[0]['name'] == 'ann'",
    ),
    k(
        "numpy masked array",
        "import numpy as np; masked = np.ma.masked_array([1, 2, 3], mask=[0, 1, 0])",
        "assert masked.sum() == 4 and masked.mask.tolist() == [False, True, False]",
    ),
    k(
        "numpy datetime64",
        "import numpy as np; days = np.arange('2024-01', '2024-02', dtype='datetime64[D]')",
        "assert len(days) == 31 and str(days[-1]) == '2024-01-31'",
    ),
    k(
        "numpy object array",
        "import numpy as np; objs = np.array([{'a': 1}, [2]], dtype=object)",
        "assert objs[0]['a'] == 1 and objs[1] == [2]",
    ),
    k(
        "numpy bool and complex",
        "import numpy as np; mask_b = np.array([True, False]); cplx = np.array([1+2j])",
        "assert mask_b.any() and cplx.imag[0] == 2",
    ),
    k(
        "numpy scalar",
        "import numpy as np; scalar = np.float32(1.5)",
        "assert scalar.dtype == np.float32 and scalar * 2 == 3",
    ),
    k(
        "numpy random Generator",
        "import numpy as np; gen = np.random.default_rng(7); gen.random(3)",
        "assert gen.random() == np.random.default_rng(7).random(4)[-1]",
    ),
    k(
        "numpy memmap re-opened on its file",
        """
        import numpy as np
        mm = np.memmap(WORK / "mm.dat", dtype="float32", mode="w+", shape=(1000,))
        mm[:] = 7
        """,
        """
        import os
        assert type(mm) is np.memmap and os.path.samefile(mm.filename, WORK / "mm.dat") and mm.mode == "r+"
        assert mm[5] == 7
        mm[0] = 9; mm.flush()
        assert np.fromfile(WORK / "mm.dat", dtype="float32")[0] == 9
        """,
    ),
    k(
        "numpy views stay views",
        "import numpy as np; owner = np.arange(10.0); every_other = owner[::2]; mat = np.arange(12).reshape(3, 4); col1 = mat[:, 1]",
        "owner[0] = 99; mat[0, 1] = -1; assert every_other[0] == 99 and col1[0] == -1 and np.shares_memory(owner, every_other) and every_other.flags.writeable",
    ),
    k(
        "DataFrame on an array without a copy",
        "import numpy as np, pandas as pd; backing = np.zeros((4, 2)); on_backing = pd.DataFrame(backing, copy=False)",
        "backing[0, 0] = 5; assert on_backing.iloc[0, 0] == 5 and np.shares_memory(on_backing.values, backing)",
    ),
    k(
        "view into a numpy memmap",
        """
        import numpy as np
        mm_owner = np.memmap(WORK / "mm_view.dat", dtype="int32", mode="w+", shape=(4, 5))
        mm_rows = mm_owner[1:3]
        """,
        "mm_rows[0, 0] = 3; assert mm_owner[1, 0] == 3 and mm_owner.filename is not None",
    ),
    k(
        "StrEnum",
        "import enum\nclass Unit(enum.StrEnum):\n    KG = 'kg'\n    G = 'g'\nunit = Unit.KG",
        "assert unit is Unit('kg') and unit == 'kg' and unit.upper() == 'KG'",
    ),
    k(
        "fixed-offset timezone",
        "import datetime; plus3 = datetime.timezone(datetime.timedelta(hours=3))",
        "assert str(plus3) == 'UTC+03:00'",
    ),
    k(
        "string.Template",
        "import string; greeting = string.Template('$who likes $what')",
        "assert greeting.substitute(who='ann', what='tea') == 'ann likes tea'",
    ),
    k(
        "weakref to a notebook object",
        "import weakref\nclass Target:\n    pass\ntarget = Target()\ntarget_ref = weakref.ref(target)",
        "assert target_ref() is target",
    ),
    k(
        "MappingProxyType",
        "import types; frozen_map = types.MappingProxyType({'a': 1})",
        "assert frozen_map['a'] == 1 and dict(frozen_map) == {'a': 1}",
    ),
    # -- resources ---------------------------------------------------------------------------
    k(
        "unlocked locks and an event",
        "import threading; lock = threading.Lock(); rlock = threading.RLock(); ready = threading.Event(); ready.set()",
        "assert lock.acquire(blocking=False) and rlock.acquire() and rlock.acquire() and ready.is_set()",
    ),
    k(
        "file open for reading, at its position",
        """
        (WORK / "lines.txt").write_text("one\\ntwo\\nthree\\n")
        reader = open(WORK / "lines.txt")
        reader.readline()
        breader = open(WORK / "lines.txt", "rb")
        breader.read(2)
        """,
        "assert reader.readline() == 'two\\n' and breader.read(3) == b'e\\nt' and reader.mode == 'r'",
    ),
    k(
        "sqlite3 connection to a database file",
        """
        import sqlite3
        db = sqlite3.connect(WORK / "data.db")
        db.execute("create table t (x)"); db.execute("insert into t values (42)"); db.commit()
        db.row_factory = sqlite3.Row
        """,
        "assert db.execute('select x from t').fetchone()['x'] == 42",
    ),
    k(
        "file changed after the checkpoint is not re-opened",
        "(WORK / 'changing.txt').write_text('old'); stale_reader = open(WORK / 'changing.txt')",
        "assert 'stale_reader' not in globals()",
        after_shutdown="(WORK / 'changing.txt').write_text('new content')",
        lost={"stale_reader": "changed since the checkpoint"},
    ),
    k(
        "file open for writing is left out",
        "writer = open(WORK / 'out.txt', 'w')",
        "assert 'writer' not in globals() and (WORK / 'out.txt').exists()",
        lost={"writer": "truncate"},
    ),
    k(
        "held lock is left out",
        "import threading; held_lock = threading.Lock(); held_lock.acquire()",
        "assert 'held_lock' not in globals()",
        lost={"held_lock": "held"},
    ),
    k(
        "memmap whose file changed size is not re-opened",
        "import numpy as np; shrunk = np.memmap(WORK / 'shrunk.dat', dtype='uint8', mode='w+', shape=(64,))",
        "assert 'shrunk' not in globals()",
        after_shutdown="(WORK / 'shrunk.dat').write_bytes(b'x')",
        lost={"shrunk": "changed size"},
    ),
    k(
        "memmap whose file was rewritten is re-opened, and the report says so",
        "import numpy as np; rewritten = np.memmap(WORK / 'rewritten.dat', dtype='uint8', mode='w+', shape=(4,))",
        """
        _problems = get_ipython().kernel.restore_report.problems
        assert rewritten.tolist() == [1, 2, 3, 4] and any("rewritten" in p and "modified" in p for p in _problems)
        """,
        after_shutdown="import time; time.sleep(0.01); (WORK / 'rewritten.dat').write_bytes(bytes([1, 2, 3, 4]))",
    ),
    # -- pandas ------------------------------------------------------------------------------
    k(
        "pandas DataFrame",
        "import pandas as pd; frame = pd.DataFrame({'a': range(5), 'b': list('vwxyz')})",
        "frame.loc[0, 'a'] = 10; assert frame['a'].sum() == 20 and frame['b'].iloc[-1] == 'z'",
    ),
    k(
        "pandas Series",
        "import pandas as pd; series = pd.Series([1.0, 2.0], index=['x', 'y'], name='s')",
        "assert series['y'] == 2.0 and series.name == 's'",
    ),
    k(
        "pandas categorical",
        "import pandas as pd; cats = pd.Series(['lo', 'hi', 'lo'], dtype='category')",
        "assert cats.cat.categories.tolist() == ['hi', 'lo'] and cats.value_counts()['lo'] == 2",
    ),
    k(
        "pandas tz-aware index",
        "import pandas as pd; stamps = pd.Series(range(3), index=pd.date_range('2024-01-01', periods=3, tz='Europe/Paris'))",
        "assert str(stamps.index.tz) == 'Europe/Paris' and stamps.resample('2D').sum().iloc[0] == 1",
    ),
    k(
        "pandas MultiIndex",
        "import pandas as pd; multi = pd.DataFrame({'v': range(4)}, index=pd.MultiIndex.from_product([['a', 'b'], [1, 2]]))",
        "assert multi.loc[('b', 2), 'v'] == 3 and multi.groupby(level=0)['v'].sum().tolist() == [1, 5]",
    ),
    k(
        "pandas nullable ints",
        "import pandas as pd; nullable = pd.array([1, None, 3], dtype='Int64')",
        "assert nullable.isna().tolist() == [False, True, False] and nullable.sum() == 4",
    ),
    k(
        "pandas scalars",
        "import pandas as pd; ts = pd.Timestamp('2024-01-01 12:00'); td = pd.Timedelta('2h'); per = pd.Period('2024Q1'); ivl = pd.Interval(0, 5)",
        "assert ts + td == pd.Timestamp('2024-01-01 14:00') and per.end_time.month == 3 and 3 in ivl",
    ),
    # -- the scientific stack -----------------------------------------------------------
    k(
        "scipy sparse matrix",
        "import scipy.sparse as sp; sparse = sp.random(50, 50, density=0.1, format='csr', random_state=1)",
        "assert sparse.nnz == 250 and (sparse @ sparse.T).shape == (50, 50)",
    ),
    k(
        "scipy frozen distribution",
        "from scipy import stats; normal = stats.norm(loc=1, scale=2)",
        "assert abs(normal.cdf(1) - 0.5) < 1e-12 and normal.mean() == 1",
    ),
    k(
        "fitted scikit-learn pipeline with a notebook function",
        """
        import numpy as np
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import FunctionTransformer, StandardScaler
        from sklearn.linear_model import LogisticRegression
        def add_square(X):
            return np.hstack([X, X ** 2])
        Xtr = np.random.default_rng(0).normal(size=(60, 2)); ytr = (Xtr[:, 0] > 0).astype(int)
        model = make_pipeline(FunctionTransformer(add_square), StandardScaler(), LogisticRegression()).fit(Xtr, ytr)
        """,
        "assert model.score(Xtr, ytr) > 0.9 and model.predict(Xtr[:3]).shape == (3,)",
    ),
    k(
        "polars DataFrame",
        "import polars as pl; pframe = pl.DataFrame({'a': [1, 2, 3], 'b': ['x', 'y', 'z']})",
        "assert pframe.filter(pl.col('a') > 1)['b'].to_list() == ['y', 'z']",
    ),
    k(
        "pyarrow Table",
        "import pyarrow as pa; table = pa.table({'a': [1, 2], 'b': ['x', None]})",
        "assert table.num_rows == 2 and table.column('b').null_count == 1",
    ),
    k(
        "Pillow image",
        "from PIL import Image as PILImage; picture = PILImage.new('RGB', (4, 3), (255, 0, 0))",
        "assert picture.size == (4, 3) and picture.getpixel((1, 1)) == (255, 0, 0) and picture.rotate(90, expand=True).size == (3, 4)",
    ),
    k(
        "polars LazyFrame and Series",
        "import polars as pl; lazy = pl.DataFrame({'a': [1, 2, 3]}).lazy().filter(pl.col('a') > 1); pseries = pl.Series('s', [1, 2])",
        "assert lazy.collect()['a'].to_list() == [2, 3] and pseries.sum() == 3",
    ),
    k(
        "pyarrow RecordBatch",
        "import pyarrow as pa; batch = pa.record_batch([pa.array([1, 2])], names=['x'])",
        "assert batch.num_rows == 2 and batch.column(0).to_pylist() == [1, 2]",
    ),
    k(
        "scipy interpolator and optimize result",
        "from scipy import interpolate, optimize; interp = interpolate.interp1d([0, 1, 2], [0, 10, 20]); opt = optimize.minimize(lambda v: (v[0] - 3) ** 2, [0.0])",
        "assert float(interp(1.5)) == 15.0 and round(float(opt.x[0]), 3) == 3.0 and opt.success",
    ),
    k(
        "fitted KMeans",
        "import numpy as np; from sklearn.cluster import KMeans; km = KMeans(n_clusters=2, n_init=2, random_state=0).fit(np.array([[0.0], [0.1], [5.0], [5.1]]))",
        "assert len(set(km.predict(np.array([[0.0], [5.0]])).tolist())) == 2",
    ),
    k(
        "fitted ColumnTransformer",
        """
        import pandas as pd
        from sklearn.compose import ColumnTransformer
        from sklearn.preprocessing import OneHotEncoder, StandardScaler
        mixed = pd.DataFrame({"c": ["a", "b", "a"], "n": [1.0, 2.0, 3.0]})
        columns = ColumnTransformer([("oh", OneHotEncoder(), ["c"]), ("sc", StandardScaler(), ["n"])]).fit(mixed)
        """,
        "assert columns.transform(mixed).shape == (3, 3)",
    ),
    k(
        "pandas groupby and Styler",
        "import pandas as pd; sales = pd.DataFrame({'c': ['a', 'b', 'a'], 'n': [1, 2, 3]}); by_c = sales.groupby('c'); styled = sales.style.highlight_max()",
        "assert by_c['n'].sum().to_dict() == {'a': 4, 'b': 2} and '<table' in styled.to_html()",
    ),
    k(
        "sympy expression",
        "import sympy; sy = sympy.symbols('y'); expr = sympy.expand((sy + 1) ** 3)",
        "assert expr.subs(sy, 1) == 8 and sympy.diff(expr, sy).subs(sy, 0) == 3",
    ),
    k(
        "matplotlib figure",
        """
        import matplotlib
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots()
        ax.plot([1, 2, 3], [4, 5, 6])
        """,
        """
        import io
        _png = io.BytesIO(); fig.savefig(_png, format="png")
        assert _png.getvalue().startswith(b"\\x89PNG") and ax.lines[0].get_ydata().tolist() == [4, 5, 6]
        """,
    ),
    k(
        "matplotlib figure never closed",
        """
        import matplotlib.pyplot as plt
        plt.ioff()
        open_fig = plt.figure()
        open_fig.add_subplot().plot([1, 2])
        plt.ion()
        """,
        """
        assert open_fig.axes[0].lines[0].get_xdata().tolist() == [0, 1]
        """,
    ),
]
