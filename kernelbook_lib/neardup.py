"""Near-duplicate families of PyTorch modules (and the matching behind decontamination).

KernelBook's modules were scraped from public repositories, where one operation appears again and
again under another class name, with a docstring, with ``super(Cls, self).__init__()``, with the
forward argument renamed, with other shapes in ``get_inputs()``. Each copy is its own
``problem_id`` (an exact hash); this module groups them into **families**:

1. **Normalise** (version :data:`NORMALIZATION_VERSION`, :func:`normalize`): parse with :mod:`ast`
   (never execute) and write the module as tokens that leave out what does not define the task
   (imports, docstrings, comments, the ``get_inputs``/``get_init_inputs`` harness, a
   ``__main__`` block, annotations, ``super().__init__()`` in both spellings, attributes set and
   never read, ``.contiguous()``), spell equivalent code one way (import aliases,
   ``torch.nn.functional.X`` as ``torch.X``, tensor methods as ``torch`` functions, ``torch.add``
   as ``+``, a local used once inlined into its use), give the names the module defines itself
   canonical names (``$C0``, ``$a1``, ``$v0``, ``$p0`` ...), and make every number ``<num>``. The
   operations a module uses (library calls, operators) are collected on the side. Code that does
   not parse gets a token-level fallback (:func:`_fallback`), never an error.
2. **Compare** sets (:func:`shingles`): 3-token shingles plus each operation
   :data:`OPERATION_WEIGHT` times; two modules are linked when the exact Jaccard similarity of
   their sets reaches the threshold.
3. **Find the pairs** without comparing all of them: modules with the same form are linked at
   once; distinct forms get MinHash signatures and LSH banding (``rensa``), candidates whose
   MinHash estimate is far below the threshold are dropped, the rest are checked exactly.
4. **Families** are the connected components; a family's id is the smallest key (``problem_id``)
   among its members, so a family of one is its own problem.

:class:`ReferenceIndex` matches modules against reference items (a benchmark's) with the same
normalisation, sets and threshold (``kernelbook_lib.decontam``). The default threshold and the
shingle settings were chosen with the calibration set in ``tests/fixtures/neardup_calibration.py``
(see the README). Nothing here imports Prefect or polars; the normalisation of many modules runs
in a process pool (:func:`normalize_many`).
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the workers import this module: keep them free of the display's imports
    from kernelbook_lib.progress import Progress

#: Recorded in every output that depends on the normalisation: change it whenever
#: :func:`normalize` changes what it emits, since families and matches change with it.
NORMALIZATION_VERSION = "neardup-v1"
#: Tokens per shingle (chosen with the calibration set in ``tests/lib/test_neardup.py``).
SHINGLE_SIZE = 3
#: Copies of each distinct operation in a module's set (see :func:`shingles`).
OPERATION_WEIGHT = 8
#: MinHash permutations and seed (fixed: families must be the same on every run). 150 has many
#: divisors, so the LSH bands can fit the threshold closely (5 rows x 30 bands at 0.7).
NUM_PERM = 150
MINHASH_SEED = 20240917
#: A candidate pair whose MinHash estimate is this far below the threshold is not compared
#: exactly: at 150 permutations the estimate's standard deviation is at most 0.041, so a pair
#: at the threshold falls this low with probability below 1e-4.
ESTIMATE_MARGIN = 0.15
from kernelbook_lib.defaults import DEFAULT_NEAR_DUP_THRESHOLD  # noqa: E402,F401
#: LSH must make a pair at the threshold a candidate with at least this probability.
CANDIDATE_RECALL_AT_THRESHOLD = 0.99

HARNESS_FUNCTIONS = frozenset({"get_inputs", "get_init_inputs"})
#: Methods of ``nn.Module`` that callers rely on by name: kept, never renamed.
PROTOCOL_METHODS = frozenset({"forward", "reset_parameters", "extra_repr"})
NUM, STR = "<num>", "<str>"
#: String literals up to this long that are identifiers (``"mean"``, ``"bilinear"``) are kept:
#: they usually select an operation. Others (messages) become ``<str>``.
MAX_KEPT_STRING = 24

_BINOP = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.MatMult: "@", ast.Div: "/", ast.Mod: "%",
    ast.Pow: "**", ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|", ast.BitXor: "^",
    ast.BitAnd: "&", ast.FloorDiv: "//",
}  # fmt: skip
_CMPOP = {
    ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
    ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in",
}  # fmt: skip
_UNARY = {ast.Invert: "~", ast.Not: "not", ast.UAdd: "+", ast.USub: "-"}
_BOOL = {ast.And: "and", ast.Or: "or"}
# ``x.attr = ...`` / ``x.attr += ...``: the attributes a module assigns itself (found in the
# text, before the walk, so a read before the first assignment is renamed too).
# Every ``.attr`` with what follows it: ``=`` (a plain assignment), ``+=`` and the like (an
# augmented one) or nothing (a read).
_ATTR = re.compile(r"\.\s*([A-Za-z_]\w*)(?:\s*(=(?!=)|(?:[-+*/@%&|^]|//|\*\*|<<|>>)=))?")
#: Methods that only change a tensor's memory layout: ``x.contiguous()`` is ``x``.
LAYOUT_METHODS = frozenset({"contiguous"})


class _Unsupported(Exception):
    """A syntax tree the emitter does not cover: the module gets the token fallback."""


# --- the normaliser --------------------------------------------------------------------------


def _is_docstring(node: ast.stmt) -> bool:
    return type(node) is ast.Expr and type(node.value) is ast.Constant and isinstance(node.value.value, str)


def _is_super_init(node: ast.stmt) -> bool:
    """``super().__init__()`` or ``super(Cls, self).__init__()`` without arguments."""
    if type(node) is not ast.Expr or type(node.value) is not ast.Call:
        return False
    call = node.value
    func = call.func
    return (
        not call.args and not call.keywords and type(func) is ast.Attribute and func.attr == "__init__"
        and type(func.value) is ast.Call and type(func.value.func) is ast.Name and func.value.func.id == "super"
    )  # fmt: skip


def _is_main_guard(node: ast.stmt) -> bool:
    test = getattr(node, "test", None)
    return type(node) is ast.If and type(test) is ast.Compare and type(test.left) is ast.Name and test.left.id == "__name__"


def _strip_layout(node: ast.expr) -> ast.expr:
    while (
        type(node) is ast.Call and type(node.func) is ast.Attribute and node.func.attr in LAYOUT_METHODS
        and not node.args and not node.keywords
    ):  # fmt: skip
        node = node.func.value
    return node


_SIMPLE_STATEMENTS = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return, ast.Expr)


_SKIP_FIELDS = frozenset({"ctx", "op", "ops", "type_comment", "kind"})
_CHILD_FIELDS: dict[type, tuple[str, ...]] = {}


def _names(node: ast.AST) -> tuple[dict[str, int], set[str]]:
    """Names a statement loads (with counts) and stores, nested scopes included. (A plain
    stack walk: :func:`ast.walk` costs twice as much, and this runs on every statement.)"""
    loads: dict[str, int] = {}
    stores: set[str] = set()
    stack = [node]
    pop, push, extend = stack.pop, stack.append, stack.extend
    name_type, constant_type, ast_type = ast.Name, ast.Constant, ast.AST
    while stack:
        current = pop()
        kind = type(current)
        if kind is name_type:
            if type(current.ctx) is ast.Load:
                loads[current.id] = loads.get(current.id, 0) + 1
            else:
                stores.add(current.id)
            continue
        if kind is constant_type:
            continue
        fields = _CHILD_FIELDS.get(kind)
        if fields is None:
            fields = _CHILD_FIELDS[kind] = tuple(f for f in kind._fields if f not in _SKIP_FIELDS)
        for name in fields:
            value = getattr(current, name, None)
            if type(value) is list:
                extend(v for v in value if isinstance(v, ast_type))
            elif isinstance(value, ast_type):
                push(value)
    return loads, stores


def _substitute(node: ast.AST, name: str, value: ast.expr) -> bool:
    """Replace the (one) load of ``name`` inside ``node`` by ``value``."""
    stack = [node]
    name_type, load_type, ast_type = ast.Name, ast.Load, ast.AST
    while stack:
        current = stack.pop()
        kind = type(current)
        fields = _CHILD_FIELDS.get(kind)
        if fields is None:
            fields = _CHILD_FIELDS[kind] = tuple(f for f in kind._fields if f not in _SKIP_FIELDS)
        for field in fields:
            child = getattr(current, field, None)
            if type(child) is list:
                for i, item in enumerate(child):
                    if type(item) is name_type:
                        if item.id == name and type(item.ctx) is load_type:
                            child[i] = value
                            return True
                    elif isinstance(item, ast_type):
                        stack.append(item)
            elif type(child) is name_type:
                if child.id == name and type(child.ctx) is load_type:
                    setattr(current, field, value)
                    return True
            elif isinstance(child, ast_type) and type(child) is not ast.Constant:
                stack.append(child)
    return False


def _fold(body: list[ast.stmt], info: list[tuple[dict[str, int], set[str]]] | None = None) -> list[ast.stmt]:
    """Inline the locals a function uses once: ``t = f(x); return g(t)`` is ``return g(f(x))``,
    and ``x = a(x); x = b(x); return x`` is ``return b(a(x))``. Only a use in a straight-line
    statement of the same body counts (never one inside a loop or a branch), and a value is
    never moved past a statement that rebinds a name it reads."""
    body = list(body)
    info = list(info) if info is not None else [_names(s) for s in body]
    i = 0
    while i < len(body):
        node = body[i]
        if type(node) is not ast.Assign or len(node.targets) != 1 or type(node.targets[0]) is not ast.Name:
            i += 1
            continue
        name = node.targets[0].id
        value_loads = info[i][0]
        uses, use = 0, -1
        for j in range(i + 1, len(body)):
            loads, stores = info[j]
            count = loads.get(name, 0)
            if count:
                uses += count
                use = j if use < 0 else use
                if uses > 1 or type(body[j]) not in _SIMPLE_STATEMENTS:
                    uses = 0
                    break
                if name in stores:
                    break
            elif name in stores:
                break
            elif use < 0 and not stores.isdisjoint(value_loads):
                break  # a name the value reads is rebound before the use
        if uses != 1 or not _substitute(body[use], name, node.value):
            i += 1
            continue
        loads = dict(info[use][0])
        loads[name] -= 1
        if not loads[name]:
            del loads[name]
        for key, count in value_loads.items():
            loads[key] = loads.get(key, 0) + count
        info[use] = (loads, info[use][1])
        del body[i]
        del info[i]
    return body


#: Tensor methods that are also ``torch`` functions: ``x.sigmoid()`` is written
#: ``torch.sigmoid(x)``, ``x.sum(dim=1)`` is ``torch.sum(x, dim=1)``.
TENSOR_METHODS = frozenset(
    "abs exp log log2 log1p sigmoid tanh relu sqrt rsqrt sum mean max min amax amin prod std var norm "
    "softmax log_softmax clamp clip pow matmul bmm mm transpose permute reshape flatten squeeze unsqueeze "
    "cumsum argmax argmin sin cos neg reciprocal floor ceil round sign erf square chunk split add mul sub "
    "div multiply subtract divide true_divide logsumexp all any".split()
)
#: ``torch`` functions of two tensors that are an operator: ``torch.add(x, y)`` is ``x + y``.
OPERATOR_FUNCTIONS = {
    "torch.add": "+", "torch.sub": "-", "torch.subtract": "-", "torch.mul": "*", "torch.multiply": "*",
    "torch.div": "/", "torch.divide": "/", "torch.true_divide": "/", "torch.matmul": "@", "torch.pow": "**",
}  # fmt: skip
_FUNCTIONAL = "torch.nn.functional."
CANONICAL = "$"  # canonical names start with it (no identifier does)


class _Emitter:
    """Writes one parsed module as normalised tokens (see the module docstring), and the
    *operations* it uses (``ops``: library calls and operators) on the side."""

    def __init__(self, code: str, tree: ast.Module) -> None:
        self.out: list[str] = []
        self.ops: list[str] = []
        self.aliases: dict[str, str] = {}
        self.module_roots: set[str] = set()
        # The attributes the module assigns (renamed, even where read before the assignment),
        # and those it assigns and never reads (``self.inplace = inplace`` that nothing uses:
        # the assignment is left out, and so is a parameter only it used). Found in the text.
        refs: dict[str, int] = {}
        plain: dict[str, int] = {}
        stored: set[str] = set()
        for attr, assign in _ATTR.findall(code):
            refs[attr] = refs.get(attr, 0) + 1
            if assign:
                stored.add(attr)
                if assign == "=":
                    plain[attr] = plain.get(attr, 0) + 1
        self.stored_attrs = stored
        self.dead_attrs = {attr for attr, count in plain.items() if refs[attr] == count}
        self.attr_names: dict[str, str] = {}
        self.module_names: dict[str, str] = {}
        self.methods: dict[str, str] = {}
        self.scopes: list[tuple[dict[str, str], dict[str, str]]] = []  # (args, locals) per function
        self._collect_module_names(tree.body)

    # names ----------------------------------------------------------------------------------

    def _collect_module_names(self, body: list[ast.stmt]) -> None:
        """Module-level classes, functions and assigned names, numbered in definition order, and
        the methods of the module's classes (not the nn.Module protocol)."""
        counts = {"C": 0, "f": 0, "g": 0}

        def define(name: str, prefix: str) -> None:
            if name not in self.module_names:
                self.module_names[name] = f"{CANONICAL}{prefix}{counts[prefix]}"
                counts[prefix] += 1

        for node in body:
            kind = type(node)
            if kind is ast.ClassDef:
                define(node.name, "C")
                for item in node.body:
                    if type(item) in (ast.FunctionDef, ast.AsyncFunctionDef):
                        name = item.name
                        if not (name.startswith("__") and name.endswith("__")) and name not in PROTOCOL_METHODS:
                            self.methods.setdefault(name, f"{CANONICAL}m{len(self.methods)}")
            elif kind in (ast.FunctionDef, ast.AsyncFunctionDef):
                if node.name not in HARNESS_FUNCTIONS:
                    define(node.name, "f")
            elif kind in (ast.Assign, ast.AnnAssign, ast.AugAssign):
                targets = node.targets if kind is ast.Assign else [node.target]
                for target in targets:
                    for sub in ast.walk(target):
                        if type(sub) is ast.Name:
                            define(sub.id, "g")
            elif kind in (ast.Import, ast.ImportFrom):
                self._import(node)

    def _import(self, node: ast.Import | ast.ImportFrom) -> None:
        if type(node) is ast.Import:
            for alias in node.names:
                if alias.asname:
                    self.aliases[alias.asname] = alias.name
                self.module_roots.add(alias.name.split(".")[0])
        elif node.module and not node.level:
            self.module_roots.add(node.module.split(".")[0])
            for alias in node.names:
                if alias.name != "*":
                    self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def _name(self, ident: str, store: bool = False) -> str:
        if self.scopes:
            args, local = self.scopes[-1]
            found = args.get(ident) or local.get(ident)
            if found:
                return found
            if store:
                local[ident] = name = f"{CANONICAL}v{len(local)}"
                return name
        return self.module_names.get(ident) or self.aliases.get(ident) or ident

    def _attr(self, attr: str) -> str:
        if attr in self.methods:
            return self.methods[attr]
        if attr in self.stored_attrs:
            name = self.attr_names.get(attr)
            if name is None:
                self.attr_names[attr] = name = f"{CANONICAL}p{len(self.attr_names)}"
            return name
        return attr

    def flat(self, node: ast.expr) -> str | None:
        """A ``name.attr.attr`` chain as one dotted token (aliases spelled out, canonical
        names, ``torch.nn.functional.X`` as ``torch.X``); None when not rooted at a name."""
        parts = []
        while type(node) is ast.Attribute:
            parts.append(self._attr(node.attr))
            node = node.value
        if type(node) is not ast.Name:
            return None
        parts.append(self._name(node.id))
        path = ".".join(reversed(parts))
        if path.startswith(_FUNCTIONAL):
            path = "torch." + path[len(_FUNCTIONAL) :]
        return path

    def _is_module_path(self, path: str | None) -> bool:
        return path is not None and path.split(".", 1)[0] in self.module_roots

    # statements -----------------------------------------------------------------------------

    def module(self, tree: ast.Module) -> list[str]:
        for node in tree.body:
            kind = type(node)
            if kind in (ast.FunctionDef, ast.AsyncFunctionDef) and node.name in HARNESS_FUNCTIONS:
                continue
            if _is_main_guard(node):
                continue
            self.stmt(node)
        return self.out

    def body(self, nodes: list[ast.stmt]) -> None:
        for node in nodes:
            self.stmt(node)

    def clause(self, keyword: str, nodes: list[ast.stmt]) -> None:
        """An optional clause (``else``, ``finally``): its keyword, then its body, if it has one."""
        if nodes:
            self.out.append(keyword)
            self.body(nodes)

    def stmt(self, node: ast.stmt) -> None:
        out = self.out
        kind = type(node)
        if kind is ast.Expr:
            if _is_docstring(node) or _is_super_init(node):
                return
            self.expr(node.value)
        elif kind is ast.Assign:
            for target in node.targets:
                self.target(target)
                out.append("=")
            self.expr(node.value)
        elif kind is ast.Return:
            out.append("return")
            if node.value is not None:
                self.expr(node.value)
        elif kind is ast.AugAssign:
            self.target(node.target)
            op = _BINOP[type(node.op)]
            out.append(op + "=")
            self.ops.append(op)
            self.expr(node.value)
        elif kind is ast.AnnAssign:
            if node.value is not None:
                self.target(node.target)
                out.append("=")
                self.expr(node.value)
        elif kind in (ast.FunctionDef, ast.AsyncFunctionDef):
            self.function(node)
        elif kind is ast.ClassDef:
            self.klass(node)
        elif kind in (ast.Import, ast.ImportFrom):
            self._import(node)
        elif kind is ast.If:
            if _is_main_guard(node):
                return
            out.append("if")
            self.expr(node.test)
            self.body(node.body)
            self.clause("else", node.orelse)
        elif kind in (ast.For, ast.AsyncFor):
            out.append("for")
            self.target(node.target)
            out.append("in")
            self.expr(node.iter)
            self.body(node.body)
            self.clause("else", node.orelse)
        elif kind is ast.While:
            out.append("while")
            self.expr(node.test)
            self.body(node.body)
            self.clause("else", node.orelse)
        elif kind in (ast.With, ast.AsyncWith):
            out.append("with")
            for item in node.items:
                self.expr(item.context_expr)
                if item.optional_vars is not None:
                    out.append("as")
                    self.target(item.optional_vars)
            self.body(node.body)
        elif kind is ast.Raise:
            out.append("raise")
            if node.exc is not None:
                self.expr(node.exc)
        elif kind is ast.Assert:
            out.append("assert")
            self.expr(node.test)
        elif kind is ast.Try or kind.__name__ == "TryStar":
            out.append("try")
            self.body(node.body)
            for handler in node.handlers:
                out.append("except")
                if handler.type is not None:
                    self.expr(handler.type)
                if handler.name:
                    out.append(self._name(handler.name, store=True))
                self.body(handler.body)
            self.clause("else", node.orelse)
            self.clause("finally", node.finalbody)
        elif kind is ast.Delete:
            out.append("del")
            for target in node.targets:
                self.expr(target)
        elif kind in (ast.Pass, ast.Global, ast.Nonlocal):
            return
        elif kind in (ast.Break, ast.Continue):
            out.append(kind.__name__.lower())
        else:  # match statements and anything newer: rare in modules; the fallback covers them
            raise _Unsupported(kind.__name__)

    def klass(self, node: ast.ClassDef) -> None:
        out = self.out
        for decorator in node.decorator_list:
            out.append("@")
            self.expr(decorator)
        bases = [self.flat(base) or "?" for base in node.bases]
        name = self._name(node.name, store=True)
        # The header is one token: the class's own name is canonical and adds nothing; its bases
        # say what kind of module it is.
        out.append(f"class({','.join(bases)})" if name.startswith(CANONICAL) else f"class {name}({','.join(bases)})")
        for keyword in node.keywords:
            self.expr(keyword.value)
        for item in node.body:
            if type(item) in (ast.FunctionDef, ast.AsyncFunctionDef):
                self.function(item, method=True)
            else:
                self.stmt(item)

    def _dead(self, node: ast.stmt, params: dict[str, str] | None = None) -> bool:
        """A statement that changes nothing the task depends on: ``self.x = ...`` for an
        attribute nothing reads, or ``x = x`` once layout-only calls are left out."""
        if type(node) is not ast.Assign or len(node.targets) != 1:
            return False
        target = node.targets[0]
        if type(target) is ast.Attribute:
            return (
                target.attr in self.dead_attrs and type(target.value) is ast.Name and params is not None
                and params.get(target.value.id) == f"{CANONICAL}a0"
            )  # fmt: skip
        if type(target) is ast.Name:
            value = _strip_layout(node.value)
            return type(value) is ast.Name and value.id == target.id
        return False

    def function(self, node: ast.FunctionDef | ast.AsyncFunctionDef, method: bool = False) -> None:
        out = self.out
        name = self.methods.get(node.name, node.name) if method else self._name(node.name, store=True)
        a = node.args
        positional = [*a.posonlyargs, *a.args]
        defaults: list[ast.expr | None] = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
        params = list(zip(positional, defaults))
        if a.vararg:
            params.append((a.vararg, None))
        params += list(zip(a.kwonlyargs, a.kw_defaults))
        if a.kwarg:
            params.append((a.kwarg, None))
        first = {params[0][0].arg: f"{CANONICAL}a0"} if method and params else {}
        body = [s for s in node.body if not self._dead(s, first)]
        if method and node.name == "__init__" and not node.decorator_list and all(
            type(s) is ast.Pass or _is_docstring(s) or _is_super_init(s) for s in body
        ):
            return  # nothing left but super().__init__(): the same as no __init__
        # A parameter the body never reads (a method's first, ``self``, excepted) is left out:
        # ``__init__(self, dim, inplace=False)`` that ignores ``inplace`` is ``__init__(self, dim)``.
        info = [_names(statement) for statement in body]
        loaded: set[str] = set()
        for loads, _ in info:
            loaded.update(loads)
        kept = [(p, d) for i, (p, d) in enumerate(params) if (i == 0 and first) or p.arg in loaded]
        for decorator in node.decorator_list:
            out.append("@")
            self.expr(decorator)
        # The header is one token: the arguments get canonical names in order, so their count
        # is all there is to say (the defaults follow).
        out.append(f"def {name}/{len(kept)}")
        for _, default in kept:
            if default is not None:
                self.expr(default)
        args = {p.arg: f"{CANONICAL}a{i}" for i, (p, _) in enumerate(kept)}
        self.scopes.append((args, {}))
        self.body(_fold(body, info) if len(body) > 1 else body)
        self.scopes.pop()

    # expressions ----------------------------------------------------------------------------

    def target(self, node: ast.expr) -> None:
        kind = type(node)
        if kind is ast.Name:
            self.out.append(self._name(node.id, store=True))
        elif kind in (ast.Tuple, ast.List):
            for element in node.elts:
                self.target(element)
        elif kind is ast.Starred:
            self.out.append("*")
            self.target(node.value)
        else:
            self.expr(node)

    def call(self, node: ast.Call) -> None:
        out = self.out
        func = node.func
        args = node.args
        callee = None
        if type(func) is ast.Attribute and not self._is_module_path(receiver := self.flat(func.value)):
            attr = func.attr
            if attr in LAYOUT_METHODS and not args and not node.keywords:
                self.expr(func.value)  # x.contiguous() is x
                return
            if not self._attr(attr).startswith(CANONICAL):  # a method of a value, not a submodule
                # x.sum(1) is torch.sum(x, 1); another method is .name(x, ...)
                callee = f"torch.{attr}" if attr in TENSOR_METHODS else f".{attr}"
                args = [func.value, *args]
        if callee is None:
            if type(func) is ast.Attribute:  # a module path's function, or a submodule's call
                callee = None if receiver is None else f"{receiver}.{self._attr(func.attr)}"
                if callee is not None and callee.startswith(_FUNCTIONAL):
                    callee = "torch." + callee[len(_FUNCTIONAL) :]
            else:
                callee = self.flat(func)
        if callee in OPERATOR_FUNCTIONS and len(args) == 2 and not node.keywords and not any(type(a) is ast.Starred for a in args):
            op = OPERATOR_FUNCTIONS[callee]
            self.expr(args[0])
            out.append(op)
            self.ops.append(op)
            self.expr(args[1])
            return
        if callee is None:
            self.expr(func)
            out.append("(")
        else:
            out.append(callee + "(")
            if not callee.startswith(CANONICAL):
                self.ops.append(callee)
        if callee != "super":  # super(Cls, self) is super()
            for arg in args:
                self.expr(arg)
        for keyword in node.keywords:
            out.append(f"{keyword.arg}=" if keyword.arg else "**")
            self.expr(keyword.value)
        out.append(")")

    def expr(self, node: ast.expr) -> None:
        out = self.out
        kind = type(node)
        if kind is ast.Name:
            out.append(self._name(node.id, store=type(node.ctx) is ast.Store))
        elif kind is ast.Attribute:
            path = self.flat(node)
            if path is None:
                parts = []
                while type(node) is ast.Attribute:
                    parts.append(self._attr(node.attr))
                    node = node.value
                self.expr(node)
                out.extend("." + p for p in reversed(parts))
            else:
                out.append(path)
        elif kind is ast.Call:
            self.call(node)
        elif kind is ast.Constant:
            value = node.value
            if value is None or value is True or value is False or value is Ellipsis:
                out.append(repr(value))
            elif isinstance(value, (int, float, complex)):
                out.append(NUM)
            elif isinstance(value, str) and len(value) <= MAX_KEPT_STRING and value.isidentifier():
                out.append(repr(value))
            else:
                out.append(STR)
        elif kind is ast.BinOp:
            self.expr(node.left)
            op = _BINOP[type(node.op)]
            out.append(op)
            self.ops.append(op)
            self.expr(node.right)
        elif kind is ast.UnaryOp:
            operand = node.operand
            if type(node.op) is ast.USub and type(operand) is ast.Constant and isinstance(operand.value, (int, float)):
                out.append(NUM)  # -1 is a number like 1
            else:
                op = _UNARY[type(node.op)]
                out.append(op)
                self.ops.append("u" + op)
                self.expr(operand)
        elif kind is ast.Subscript:
            self.expr(node.value)
            out.append("[")
            self.expr(node.slice)
            out.append("]")
        elif kind is ast.Tuple or kind is ast.List or kind is ast.Set:
            out.append("(" if kind is ast.Tuple else "[" if kind is ast.List else "{")
            for element in node.elts:
                self.expr(element)
            out.append(")" if kind is ast.Tuple else "]" if kind is ast.List else "}")
        elif kind is ast.Compare:
            self.expr(node.left)
            for op, right in zip(node.ops, node.comparators):
                out.append(_CMPOP[type(op)])
                self.expr(right)
        elif kind is ast.BoolOp:
            word = _BOOL[type(node.op)]
            for i, value in enumerate(node.values):
                if i:
                    out.append(word)
                self.expr(value)
        elif kind is ast.Slice:
            if node.lower is not None:
                self.expr(node.lower)
            out.append(":")
            if node.upper is not None:
                self.expr(node.upper)
            if node.step is not None:
                out.append(":")
                self.expr(node.step)
        elif kind is ast.IfExp:
            self.expr(node.body)
            out.append("if")
            self.expr(node.test)
            out.append("else")
            self.expr(node.orelse)
        elif kind is ast.Dict:
            out.append("{")
            for key, value in zip(node.keys, node.values):
                if key is None:
                    out.append("**")
                else:
                    self.expr(key)
                    out.append(":")
                self.expr(value)
            out.append("}")
        elif kind is ast.Starred:
            out.append("*")
            self.expr(node.value)
        elif kind in (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp):
            out.append("[")
            for comp in node.generators:  # targets first, so they are named before their use
                out.append("for")
                self.target(comp.target)
                out.append("in")
                self.expr(comp.iter)
                for cond in comp.ifs:
                    out.append("if")
                    self.expr(cond)
            if kind is ast.DictComp:
                self.expr(node.key)
                out.append(":")
                self.expr(node.value)
            else:
                self.expr(node.elt)
            out.append("]")
        elif kind is ast.Lambda:
            a = node.args
            params = [*a.posonlyargs, *a.args, *([a.vararg] if a.vararg else []), *a.kwonlyargs, *([a.kwarg] if a.kwarg else [])]
            args = {p.arg: f"{CANONICAL}a{i}" for i, p in enumerate(params)}
            out.append(f"lambda/{len(params)}")
            self.scopes.append((args, {}))
            self.expr(node.body)
            self.scopes.pop()
        elif kind is ast.JoinedStr:
            out.append(STR)
        elif kind is ast.NamedExpr:
            self.target(node.target)
            out.append(":=")
            self.expr(node.value)
        elif kind in (ast.Await, ast.Yield, ast.YieldFrom):
            out.append(kind.__name__.lower())
            if node.value is not None:
                self.expr(node.value)
        else:
            raise _Unsupported(kind.__name__)


# --- the token-level fallback, for code that does not parse --------------------------------

_FALLBACK_DROP = re.compile(
    r'"""[\s\S]*?(?:"""|$)|\'\'\'[\s\S]*?(?:\'\'\'|$)'  # docstrings (an unterminated one to the end)
    r"|#[^\n]*"  # comments
    r"|^[ \t]*(?:import|from)[ \t][^\n]*",  # import lines
    re.MULTILINE,
)
_FALLBACK_TOKEN = re.compile(
    r"[A-Za-z_]\w*(?:\s*\.\s*[A-Za-z_]\w*)*"  # dotted names
    r"|\d[\d_]*(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?"  # numbers
    r"|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'"  # one-line strings
    r"|\*\*=?|//=?|>>=?|<<=?|[-+*/%@&|^<>=!:]=|->|[^\s\w]"  # operators and punctuation
)
_HARNESS_DEF = re.compile(r"^def[ \t]+(?:get_inputs|get_init_inputs)\b[^\n]*\n(?:[ \t]+[^\n]*\n|[ \t]*\n)*", re.MULTILINE)
_KEYWORDS = frozenset(
    "False None True and as assert async await break class continue def del elif else except finally "
    "for from global if import in is lambda nonlocal not or pass raise return try while with yield self".split()
)


_BINARY_SYMBOLS = frozenset(_BINOP.values())


def _fallback(code: str) -> tuple[list[str], list[str]]:
    """Tokens and operations of code that does not parse: a regular-expression tokeniser that
    drops comments, docstrings, import lines and the harness functions, replaces numbers by
    ``<num>`` and long strings by ``<str>``, writes a call as ``name(``, and numbers every
    identifier defined by ``class``/``def`` or bound by ``=`` in order of appearance (one
    namespace: there is no syntax tree to scope them). Rougher than the syntax-tree form: such a
    module mostly joins other modules that do not parse."""
    text = _HARNESS_DEF.sub("", _FALLBACK_DROP.sub("", code.replace("\r\n", "\n").replace("\r", "\n") + "\n"))
    raw = _FALLBACK_TOKEN.findall(text)
    defined: dict[str, str] = {}
    for i, tok in enumerate(raw):
        if tok in _KEYWORDS or not (tok[0].isalpha() or tok[0] == "_") or "." in tok:
            continue
        prev = raw[i - 1] if i else ""
        nxt = raw[i + 1] if i + 1 < len(raw) else ""
        if prev in ("class", "def") or nxt == "=":
            defined.setdefault(tok, f"{CANONICAL}n{len(defined)}")
    out: list[str] = []
    ops: list[str] = []
    for i, tok in enumerate(raw):
        first = tok[0]
        if first.isdigit() or (first == "." and len(tok) > 1 and tok[1].isdigit()):
            out.append(NUM)
        elif first in "\"'":
            body = tok[1:-1]
            out.append(repr(body) if len(body) <= MAX_KEPT_STRING and body.isidentifier() else STR)
        elif first.isalpha() or first == "_":
            parts = [p.strip() for p in tok.split(".")]
            parts[0] = defined.get(parts[0], parts[0])
            name = ".".join(parts)
            if i + 1 < len(raw) and raw[i + 1] == "(" and tok not in _KEYWORDS:
                out.append(name + "(")
                if not name.startswith(CANONICAL):
                    ops.append(name)
            else:
                out.append(name)
        elif tok == "(" and out and out[-1].endswith("("):
            continue  # fused into the call token above
        else:
            out.append(tok)
            if tok in _BINARY_SYMBOLS:
                ops.append(tok)
    return out, ops


# --- normalised forms ------------------------------------------------------------------------


@dataclass(frozen=True)
class Normalized:
    """A module's normalised tokens, the operations it uses, and whether it parsed."""

    tokens: list[str]
    ops: list[str]
    parsed: bool

    @property
    def form(self) -> str:
        """Tokens and distinct operations as one string (equal strings: the same form)."""
        return "\x1f".join(self.tokens) + "\x1e" + "\x1f".join(sorted(set(self.ops)))


def normalize(code: str) -> Normalized:
    """The normalised form of a module. Never raises on any input text, never executes it."""
    try:
        tree = ast.parse(code)
        emitter = _Emitter(code, tree)
        return Normalized(emitter.module(tree), emitter.ops, True)
    except (SyntaxError, ValueError, RecursionError, MemoryError, _Unsupported):
        tokens, ops = _fallback(code)
        return Normalized(tokens, ops, False)


def normalized_text(code: str) -> str:
    """The normalised form as one line, then its operations: to see why two modules are, or are
    not, one family."""
    n = normalize(code)
    return " ".join(n.tokens) + "   | ops: " + " ".join(sorted(set(n.ops)))


def _form_worker(codes: list[str]) -> tuple[list[str], list[bool], tuple[int, float, float]]:
    """One chunk of modules, normalised (runs in a worker process), and the worker's pid, CPU
    seconds so far and peak RSS in MiB."""
    import resource

    forms, parsed = [], []
    for code in codes:
        n = normalize(code)
        forms.append(n.form if n.tokens else "")
        parsed.append(n.parsed)
    return forms, parsed, (os.getpid(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _worker_start() -> None:
    """A normalisation worker frees every syntax tree by reference counting (they hold no
    cycles): the cyclic garbage collector would only rescan them."""
    import gc

    gc.disable()


#: Below this many modules the normalisation runs in the calling process: a pool's start
#: (a fresh process importing this module) costs more than it saves.
MIN_MODULES_FOR_POOL = 4000
_CHUNK = 2000


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def normalize_many(
    codes: Sequence[str],
    workers: int | None = None,
    progress: Progress | None = None,
    stats: dict | None = None,
) -> tuple[list[str], list[bool]]:
    """:func:`normalize` over many modules: each module's form (:attr:`Normalized.form`, '' when
    it has no tokens) and whether it parsed. ``workers``: processes to use (default: the cores
    this process may use); small inputs run here. ``progress`` advances by the modules done.
    ``stats`` (optional) receives the workers used and their peak RSS."""
    workers = default_workers() if workers is None else max(1, workers)
    if workers == 1 or len(codes) < MIN_MODULES_FOR_POOL:
        forms, parsed, _ = _form_worker(list(codes))
        if progress is not None:
            progress.advance(len(codes))
        if stats is not None:
            stats.update(workers=1, worker_peak_rss_mib=None, worker_cpu_s=None)
        return forms, parsed
    chunks = [list(codes[i : i + _CHUNK]) for i in range(0, len(codes), _CHUNK)]
    forms = []
    parsed = []
    peak = 0.0
    # forkserver, not fork: the caller holds threads (polars, Prefect) that a fork would copy in
    # a locked state. The server imports this module once; each worker is forked from it.
    context = get_context("forkserver")
    context.set_forkserver_preload([__name__])
    used = min(workers, len(chunks))
    cpu: dict[int, float] = {}
    with ProcessPoolExecutor(max_workers=used, mp_context=context, initializer=_worker_start) as pool:
        for chunk_forms, chunk_parsed, (pid, seconds, rss) in pool.map(_form_worker, chunks):
            forms += chunk_forms
            parsed += chunk_parsed
            peak = max(peak, rss)
            cpu[pid] = max(cpu.get(pid, 0.0), seconds)
            if progress is not None:
                progress.advance(len(chunk_forms))
    if stats is not None:
        stats.update(workers=used, worker_peak_rss_mib=round(peak, 1), worker_cpu_s=round(sum(cpu.values()), 2))
    return forms, parsed


_OP_COPIES: dict[tuple[str, int], tuple[str, ...]] = {}


def shingles(form: str) -> list[str]:
    """The set a form is compared by: its :data:`SHINGLE_SIZE`-grams of tokens, and each of its
    distinct operations :data:`OPERATION_WEIGHT` times (so that in a short module, where most
    shingles are scaffolding, using another operation weighs what it should)."""
    text, _, op_text = form.partition("\x1e")
    tokens = text.split("\x1f")
    k = SHINGLE_SIZE
    out = [text] if len(tokens) <= k else list(map("\x1f".join, zip(*(tokens[i:] for i in range(k)))))
    if op_text:
        weight = OPERATION_WEIGHT
        for op in op_text.split("\x1f"):
            copies = _OP_COPIES.get((op, weight))
            if copies is None:
                copies = _OP_COPIES[op, weight] = tuple(f"{op}\x1d{copy}" for copy in range(weight))
            out += copies
    return out


# --- signatures, candidates, exact Jaccard -----------------------------------------------------


def lsh_bands(threshold: float, num_perm: int = NUM_PERM) -> int:
    """The number of LSH bands: the fewest (so the fewest false candidates) whose banding makes
    a pair whose similarity equals ``threshold`` a candidate with probability at least
    :data:`CANDIDATE_RECALL_AT_THRESHOLD`. It divides ``num_perm``."""
    for bands in sorted(b for b in range(1, num_perm + 1) if num_perm % b == 0):
        rows = num_perm // bands
        if 1.0 - (1.0 - threshold**rows) ** bands >= CANDIDATE_RECALL_AT_THRESHOLD:
            return bands
    return num_perm


def minhash_library() -> str:
    """The MinHash implementation, as recorded in the outputs."""
    from importlib.metadata import version

    return f"rensa {version('rensa')} RMinHash"


_SIGN_BATCH = 5_000


@dataclass
class Signatures:
    """MinHash signatures and exact shingle sets of distinct normalised forms."""

    forms: list[str]
    minhashes: list  # rensa.RMinHash, one per form
    shingle_sets: list[np.ndarray]  # sorted unique uint64 shingle hashes, one per form
    _digests: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def of(cls, forms: list[str]) -> Signatures:
        import rensa

        minhashes: list = []
        sets: list[np.ndarray] = []
        # In batches, so the shingle strings of only one batch are alive at a time.
        for start in range(0, len(forms), _SIGN_BATCH):
            sets_of = [shingles(form) for form in forms[start : start + _SIGN_BATCH]]
            minhashes += rensa.RMinHash.from_token_sets(sets_of, NUM_PERM, MINHASH_SEED)
            sets += [np.array(sorted(set(h)), dtype=np.uint64) for h in rensa.RMinHash.hash_token_sets(sets_of)]
        return cls(forms=forms, minhashes=minhashes, shingle_sets=sets)

    @property
    def digests(self) -> np.ndarray:
        """The signatures as a ``(forms, NUM_PERM)`` uint32 matrix."""
        if self._digests is None:
            self._digests = np.array([m.digest() for m in self.minhashes], dtype=np.uint32).reshape(len(self.minhashes), NUM_PERM)
        return self._digests

    def jaccard(self, i: int, other: Signatures, j: int) -> float:
        """Exact Jaccard similarity of this form ``i`` and ``other``'s form ``j``."""
        a, b = self.shingle_sets[i], other.shingle_sets[j]
        inter = np.intersect1d(a, b, assume_unique=True).size
        return inter / (a.size + b.size - inter)

    def lsh(self, threshold: float):
        """An LSH index (``rensa.RMinHashLSH``) of these signatures, keyed by position."""
        import rensa

        index = rensa.RMinHashLSH(threshold, NUM_PERM, lsh_bands(threshold))
        if self.minhashes:
            index.insert_many(self.minhashes)
        return index


def check_threshold(threshold: float) -> None:
    from kernelbook_lib.errors import UserError

    if not isinstance(threshold, (int, float)) or math.isnan(threshold) or not 0.0 < threshold <= 1.0:
        raise UserError(f"--near-dup-threshold must be above 0 and at most 1, not {threshold}")


def distinct_forms(forms: Sequence[str]) -> tuple[list[str], list[int]]:
    """The distinct non-empty forms, and for each input its position among them (-1: empty)."""
    index: dict[str, int] = {}
    positions: list[int] = []
    for form in forms:
        if not form:
            positions.append(-1)
            continue
        pos = index.get(form)
        if pos is None:
            pos = index[form] = len(index)
        positions.append(pos)
    return list(index), positions


# --- families ----------------------------------------------------------------------------------


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


@dataclass
class FamilyResult:
    """Families of a set of modules: ``family_of[i]`` is the family id of module ``i`` and
    ``forms[i]`` its normalised form ('' when it has none, None when not normalised)."""

    family_of: list[str]
    forms: list[str] | None
    stats: dict = field(default_factory=dict)


def family_stats(family_of: Sequence[str]) -> dict:
    """Problems, families, problems in a family of more than one, the largest family."""
    sizes: dict[str, int] = {}
    for fam in family_of:
        sizes[fam] = sizes.get(fam, 0) + 1
    largest_id, largest = min(sizes.items(), key=lambda kv: (-kv[1], kv[0])) if sizes else (None, 0)
    return {
        "problems": len(family_of),
        "families": len(sizes),
        "problems_in_shared_families": sum(n for n in sizes.values() if n > 1),
        "shared_families": sum(1 for n in sizes.values() if n > 1),
        "largest_family": largest,
        "largest_family_id": largest_id if largest > 1 else None,
    }


#: Forms queried against the LSH index at a time, and candidate pairs whose MinHash estimate is
#: computed at a time (numpy: 150 uint32 per signature, so about 60 MB per batch).
_QUERY_BATCH = 5_000
_ESTIMATE_BATCH = 100_000


def _candidate_pairs(sigs: Signatures, index, floor: float):
    """The LSH candidate pairs ``(i, j)``, ``i < j``, of the forms of ``sigs``, in batches:
    yields the pairs whose MinHash estimate is at least ``floor`` (two arrays) and how many
    candidates the batch had. The estimates are computed in numpy from the signatures (the
    share of equal slots, as ``RMinHash.jaccard`` does), not pair by pair in Python."""
    digests = sigs.digests
    for start in range(0, len(sigs.minhashes), _QUERY_BATCH):
        results = index.query_all(sigs.minhashes[start : start + _QUERY_BATCH])
        lengths = np.fromiter((len(r) for r in results), dtype=np.int64, count=len(results))
        right = np.fromiter(itertools.chain.from_iterable(results), dtype=np.int64, count=int(lengths.sum()))
        left = np.repeat(np.arange(start, start + len(results), dtype=np.int64), lengths)
        keep = right > left
        left, right = left[keep], right[keep]
        survive = np.zeros(left.size, dtype=bool)
        for s in range(0, left.size, _ESTIMATE_BATCH):
            same = digests[left[s : s + _ESTIMATE_BATCH]] == digests[right[s : s + _ESTIMATE_BATCH]]
            survive[s : s + _ESTIMATE_BATCH] = same.mean(axis=1) >= floor
        left, right = left[survive], right[survive]
        order = np.lexsort((right, left))  # deterministic, whatever order the index answers in
        yield left[order], right[order], int(keep.sum())


def group_families(
    keys: Sequence[str],
    codes: Sequence[str],
    threshold: float = DEFAULT_NEAR_DUP_THRESHOLD,
    workers: int | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> FamilyResult:
    """Near-duplicate families of the modules ``codes``, one per distinct ``keys[i]`` (e.g. a
    ``problem_id``): two modules are linked when the exact Jaccard similarity of their sets
    (:func:`shingles`) is at least ``threshold``; families are the connected components, each
    named by the smallest key among its members. The result does not depend on the order of the
    modules."""
    check_threshold(threshold)
    if len(keys) != len(codes):
        raise ValueError("keys and codes must have the same length")
    if len(set(keys)) != len(keys):
        raise ValueError("keys must be distinct (one module per key)")
    started = time.perf_counter()
    pool_stats: dict = {}
    forms, parsed = normalize_many(codes, workers, progress, pool_stats)
    normalized = time.perf_counter()
    # Modules with the same form are one family at once; only distinct forms are compared. A
    # module whose form is empty (imports and harness only) has nothing to compare: it stays alone.
    distinct, position = distinct_forms(forms)
    sigs = Signatures.of(distinct)
    uf = _UnionFind(len(distinct))
    compared = exact = confirmed = 0
    if distinct:
        index = sigs.lsh(threshold)
        for left, right, candidates in _candidate_pairs(sigs, index, threshold - ESTIMATE_MARGIN):
            compared += candidates
            for i, j in zip(left.tolist(), right.tolist()):
                # A pair already in one family needs no check: it cannot change the components.
                if uf.find(i) == uf.find(j):
                    continue
                exact += 1
                if sigs.jaccard(i, sigs, j) >= threshold:
                    confirmed += 1
                    uf.union(i, j)
        if log:
            log(f"near-dup: {len(distinct):,} distinct forms, {compared:,} candidate pairs compared "
                     f"({exact:,} exactly), {confirmed:,} linked")
    smallest: dict[int, str] = {}
    for key, pos in zip(keys, position):
        if pos >= 0:
            root = uf.find(pos)
            if root not in smallest or key < smallest[root]:
                smallest[root] = key
    family_of = [smallest[uf.find(pos)] if pos >= 0 else key for key, pos in zip(keys, position)]
    stats = {
        "normalization": NORMALIZATION_VERSION,
        "threshold": threshold,
        "shingle_size": SHINGLE_SIZE,
        "operation_weight": OPERATION_WEIGHT,
        "num_perm": NUM_PERM,
        "lsh_bands": lsh_bands(threshold),
        "minhash": minhash_library(),
        **family_stats(family_of),
        "distinct_forms": len(distinct),
        "unparsed_modules": parsed.count(False),
        "pairs_compared": compared,
        "pairs_compared_exactly": exact,
        "pairs_confirmed": confirmed,
        "normalize_s": round(normalized - started, 3),
        "wall_s": round(time.perf_counter() - started, 3),
        **pool_stats,
    }
    return FamilyResult(family_of=family_of, forms=forms, stats=stats)


def singleton_families(keys: Sequence[str]) -> FamilyResult:
    """Every module its own family (``--no-near-dup``): the family id is the key itself."""
    return FamilyResult(family_of=list(keys), forms=None, stats=family_stats(list(keys)))


# --- matching against reference items (decontamination) -------------------------------------


@dataclass
class Match:
    """The reference item (position) a module matches best, with the exact similarity."""

    item: int
    similarity: float


class ReferenceIndex:
    """Reference modules (a benchmark's items) to match other modules against, with the same
    normalisation, sets and threshold as the families."""

    def __init__(self, codes: Sequence[str], threshold: float = DEFAULT_NEAR_DUP_THRESHOLD, workers: int | None = None) -> None:
        check_threshold(threshold)
        self.threshold = threshold
        forms, _ = normalize_many(codes, workers)
        distinct, self.position = distinct_forms(forms)
        self.items_of: list[list[int]] = [[] for _ in distinct]  # items per distinct form, in order
        for item, pos in enumerate(self.position):
            if pos >= 0:
                self.items_of[pos].append(item)
        self.sigs = Signatures.of(distinct)
        self.index = self.sigs.lsh(threshold)

    def match(self, forms: Sequence[str]) -> tuple[list[Match | None], int]:
        """For each form, its best match among the references (highest similarity, then the
        first item), or None; and the number of candidate pairs compared."""
        distinct, position = distinct_forms(forms)
        query = Signatures.of(distinct)
        best: list[Match | None] = [None] * len(distinct)
        compared = 0
        if distinct and self.sigs.forms:
            for i, candidates in enumerate(self.index.query_all(query.minhashes)):
                for ref in sorted(candidates):
                    compared += 1
                    if query.minhashes[i].jaccard(self.sigs.minhashes[ref]) < self.threshold - ESTIMATE_MARGIN:
                        continue
                    similarity = query.jaccard(i, self.sigs, ref)
                    if similarity >= self.threshold:
                        item = self.items_of[ref][0]
                        current = best[i]
                        if current is None or (similarity, -item) > (current.similarity, -current.item):
                            best[i] = Match(item, similarity)
        return [best[pos] if pos >= 0 else None for pos in position], compared


def form_digest(form: str) -> str:
    """A short stable id of a normalised form (for logs and tests)."""
    return hashlib.sha256(form.encode("utf-8")).hexdigest()[:16]
