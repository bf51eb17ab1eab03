"""The scaffolding tokens of a module (``neardup-v2``, unchanged from ``neardup-v1``): its code
as tokens, with what does not define the task left out and equivalent code spelled one way.

Parse with :mod:`ast` (never execute) and write the module as tokens that leave out imports,
docstrings, comments, the ``get_inputs``/``get_init_inputs`` harness, a ``__main__`` block,
annotations, ``super().__init__()`` in both spellings, attributes set and never read and
``.contiguous()``; spell equivalent code one way (import aliases, ``torch.nn.functional.X`` as
``torch.X``, tensor methods as ``torch`` functions, ``torch.add`` as ``+``, a local used once
inlined into its use); give the names the module defines itself canonical names (``$C0``,
``$a1``, ``$v0``, ``$p0`` ...) and make every number ``<num>``. The library calls and operators
a module uses are collected on the side. This module holds the helpers and the token-level
fallback for code that does not parse (:func:`fallback`); :mod:`kernelbook_lib.neardup_emit`
the emitter. In ``neardup-v2`` these tokens are the *scaffolding* of a module: the operation
graph (:mod:`kernelbook_lib.neardup_trace`) carries the computation.
"""

from __future__ import annotations

import ast
import re

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


class Unsupported(Exception):
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


def fallback(code: str) -> tuple[list[str], list[str]]:
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
