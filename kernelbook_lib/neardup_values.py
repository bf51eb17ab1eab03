"""The values the forward walk (:mod:`kernelbook_lib.neardup_trace`) computes with: a tensor is
a node (``int``) of the operation graph, a constant a :class:`~kernelbook_lib.neardup_ops.Const`;
the rest are the Python objects a module's code handles (sub-modules, lists, functions, library
names). Nothing here runs code."""

from __future__ import annotations

import ast
import math

from kernelbook_lib.neardup_names import UNKNOWN, Const

MAX_DEPTH = 12  # calls walked into, nested
MAX_STEPS = 6000  # statements and calls walked per module
MAX_UNROLL = 24  # items of a written-out list a loop is unrolled over


class TraceError(Exception):
    """The forward path could not be walked (too large, or code the walker does not cover)."""


class Tup:
    """A tuple, list or dict of values (``keys`` for a dict); ``repeated``: built by a loop or a
    comprehension, its length a constant (``items[0]`` stands for every item)."""

    __slots__ = ("items", "repeated", "keys")

    def __init__(self, items: list, repeated: bool = False, keys: list | None = None) -> None:
        self.items, self.repeated, self.keys = items, repeated, keys


class Group:
    """Items a loop appended to a list (``for _ in range(n): layers.append(...)``): applied in
    order, the whole marked ``loop`` (their count is a constant)."""

    __slots__ = ("items", "loop")

    def __init__(self, items: list, loop: int) -> None:
        self.items, self.loop = items, loop


class Mod:
    """A sub-module. ``kind``: ``op`` (a library layer, ``label`` its operation), ``seq`` (layers
    applied in order), ``list`` (a ``ModuleList``/``ModuleDict``: ``items`` a :class:`Tup`),
    ``own`` (an instance of a class of the module: ``cls``, ``attrs``), ``alt`` (one of
    ``items``, unknown which)."""

    __slots__ = ("kind", "label", "items", "cls", "attrs", "serial")

    def __init__(self, kind: str, label: str = "", items=None, cls: str = "", attrs: dict | None = None, serial: int | None = None) -> None:
        self.kind, self.label, self.items, self.cls, self.attrs = kind, label, items, cls, attrs
        self.serial = serial  # a layer with weights of its own: its applications are its own nodes


class Fn:
    """A function or method of the module (``owner``: the instance it is bound to)."""

    __slots__ = ("node", "owner", "cls", "lead")

    def __init__(self, node, owner: Mod | None = None, cls: str = "", lead: tuple = ()) -> None:
        self.node, self.owner, self.cls = node, owner, cls
        self.lead = lead  # arguments passed first (the ``ctx`` of an autograd function's forward)


class Lib:
    """A library name (``torch.nn.functional.relu``, ``math.pi``), not yet called."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


class Method:
    """``value.name`` not yet called (a tensor method, ``list.append``)."""

    __slots__ = ("value", "name")

    def __init__(self, value, name: str) -> None:
        self.value, self.name = value, name


class Super:
    __slots__ = ("inst", "cls")

    def __init__(self, inst: Mod, cls: str) -> None:
        self.inst, self.cls = inst, cls


class ClassRef:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class Ret:
    __slots__ = ("value", "raised")

    def __init__(self, value, raised: bool = False) -> None:
        self.value, self.raised = value, raised


MATH_CONSTANTS = {"pi": math.pi, "e": math.e, "inf": math.inf, "tau": math.tau}
CONTAINERS = {"sequential": "seq", "modulelist": "list", "moduledict": "list", "parameterlist": "params", "parameterdict": "params"}
#: Built-in functions whose result is a constant (or nothing the task depends on).
BUILTIN_CONST = frozenset("len isinstance hasattr callable print id type str repr format issubclass round divmod "
                          "iter next hash vars dir locals globals setattr delattr open input".split())  # fmt: skip
NONE = Const(None)  # the literal None (UNKNOWN is "some constant")


def truth(value) -> bool | None:
    """The truth of a value when it is known without running anything."""
    if type(value) is Const:
        v = value.value
        if value is UNKNOWN or (v is None and value is not NONE):
            return None
        return bool(v) if isinstance(v, (bool, int, float, str)) else (False if v is None else None)
    if isinstance(value, (Mod, Fn)):
        return True  # a layer or a function (``if self.downsample:``); a tensor's truth is its value
    if type(value) is Tup:
        return None if value.repeated else bool(value.items)
    return None


def literal(node: ast.expr):
    if type(node) is ast.Constant:
        return NONE if node.value is None else Const(node.value)
    if type(node) is ast.UnaryOp and type(node.op) is ast.USub and type(node.operand) is ast.Constant:
        v = node.operand.value
        return Const(-v) if isinstance(v, (int, float)) and not isinstance(v, bool) else UNKNOWN
    if type(node) in (ast.List, ast.Tuple):
        return Tup([literal(e) for e in node.elts])
    return UNKNOWN


