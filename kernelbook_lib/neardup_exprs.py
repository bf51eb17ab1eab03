"""Expressions in the forward walk (``neardup-v2``): names, operators, comparisons, attributes,
subscripts, comprehensions. :class:`Expressions` is the half of
:class:`kernelbook_lib.neardup_trace.Tracer` that evaluates an expression to a value (a graph
node for a tensor, a :class:`~kernelbook_lib.neardup_ops.Const`, a sub-module ...). ``a - b`` is
``a + (-1) b``, ``a / b`` is ``a * reciprocal(b)``, ``x @ W`` with a parameter ``W`` is a linear
layer; a comparison or a truth test whose operands are known without running anything (``mask
is None`` for an argument that defaults to None, a flag from ``get_init_inputs()``) is a
constant, which picks one side of a branch. Nothing is run.
"""

from __future__ import annotations

import ast

from kernelbook_lib.neardup_calls import Calls, flat_items
from kernelbook_lib.neardup_names import META_NAMES, RANDOM_NAMES, UNKNOWN, Const, canonical_name
from kernelbook_lib.neardup_values import MATH_CONSTANTS, NONE, ClassRef, Fn, Lib, Method, Mod, Super, TraceError, Tup, truth


def _decorator_name(node: ast.expr) -> str:
    return node.id if type(node) is ast.Name else node.attr if type(node) is ast.Attribute else ""


class Expressions(Calls):
    """Expression evaluation (the tracer provides ``g``, ``aliases``, ``functions``,
    ``classes``, ``globals``, ``assign``, ``iteration``, ``element``, ``join``, ``method``,
    ``library_base``)."""

    def path_of(self, node: ast.expr) -> str | None:
        """A dotted library name (``F.relu`` is ``torch.nn.functional.relu``), or None."""
        parts = []
        while type(node) is ast.Attribute:
            parts.append(node.attr)
            node = node.value
        if type(node) is not ast.Name:
            return None
        root = self.aliases.get(node.id)
        if root is None:
            return None
        return ".".join([root, *reversed(parts)])

    def name(self, ident: str, env: dict):
        if ident in env:
            return env[ident]
        if ident in self.functions:
            return Fn(self.functions[ident])
        if ident in self.classes:
            return ClassRef(ident)
        if ident in self.globals:
            return self.globals[ident]
        if ident in self.aliases:
            return Lib(self.aliases[ident])
        if ident == "None":
            return NONE
        return Lib("builtins." + ident)

    def expr(self, node: ast.expr, env: dict):
        kind = type(node)
        if kind is ast.Name:
            return self.name(node.id, env)
        if kind is ast.Constant:
            return NONE if node.value is None else Const(node.value)
        if kind is ast.Attribute:
            return self.attribute(self.expr(node.value, env), node.attr)
        if kind is ast.Call:
            return self.call(node, env)
        if kind is ast.BinOp:
            return self.binop(type(node.op), self.expr(node.left, env), self.expr(node.right, env))
        if kind is ast.UnaryOp:
            value = self.expr(node.operand, env)
            op = type(node.op)
            if op is ast.USub:
                return self.g.neg(self.operand(value))
            if op is ast.UAdd:
                return value
            if type(value) is int:  # ~mask, not mask on a tensor
                return self.g.node("not", (value,))
            known = truth(value)
            if known is not None:
                return Const(not known) if op is ast.Not else UNKNOWN
            return self.g.node("not", (value,)) if type(value) is int else UNKNOWN
        if kind is ast.Compare:
            return self.compare(node, env)
        if kind is ast.BoolOp:
            values = [self.expr(v, env) for v in node.values]
            truths = [truth(v) for v in values]
            is_and = type(node.op) is ast.And
            if any(t is (not is_and) for t in truths if t is not None):
                return Const(not is_and)
            if all(t is not None for t in truths):
                return Const(is_and)
            tensors = [v for v in values if type(v) is int]
            if len(tensors) > 1:
                return self.g.node("and" if is_and else "or", tuple(tensors))
            return tensors[0] if tensors else UNKNOWN
        if kind is ast.IfExp:
            known = truth(self.expr(node.test, env))
            if known is not None:
                return self.expr(node.body if known else node.orelse, env)
            return self.join(self.expr(node.body, env), self.expr(node.orelse, env))
        if kind is ast.Subscript:
            return self.subscript(self.expr(node.value, env), node.slice, env)
        if kind in (ast.Tuple, ast.List, ast.Set):
            items, repeated = [], False
            for element in node.elts:
                if type(element) is ast.Starred:
                    inner = self.expr(element.value, env)
                    if type(inner) is Tup:
                        items += inner.items
                        repeated |= inner.repeated
                    else:
                        items.append(inner)
                else:
                    items.append(self.expr(element, env))
            return Tup(items, repeated)
        if kind is ast.Dict:
            return Tup([self.expr(v, env) for v in node.values], keys=[self.expr(k, env) if k is not None else UNKNOWN for k in node.keys])
        if kind in (ast.ListComp, ast.GeneratorExp, ast.SetComp, ast.DictComp):
            return self.comprehension(node, env)
        if kind is ast.Lambda:
            return Fn(node)
        if kind is ast.NamedExpr:
            value = self.expr(node.value, env)
            self.assign(node.target, value, env)
            return value
        if kind is ast.Starred:
            return self.expr(node.value, env)
        if kind is ast.JoinedStr:
            return UNKNOWN
        if kind in (ast.Await, ast.Yield, ast.YieldFrom):
            return self.expr(node.value, env) if node.value is not None else NONE
        if kind is ast.Slice:
            return UNKNOWN
        raise TraceError(kind.__name__)

    def comprehension(self, node, env: dict):
        local = dict(env)
        unrolled: list[list] = [[]]
        for comp in node.generators:
            iterable = self.expr(comp.iter, local)
            items = self.iteration(iterable)
            if items is not None and len(node.generators) == 1:
                out = []
                for item in items:
                    self.assign(comp.target, item, local)
                    if all(truth(self.expr(c, local)) is not False for c in comp.ifs):
                        out.append(self.expr(node.elt if type(node) is not ast.DictComp else node.value, local))
                return Tup(out)
            self.assign(comp.target, self.element(iterable), local)
        value = self.expr(node.elt if type(node) is not ast.DictComp else node.value, local)
        del unrolled
        if type(value) is int:
            value = self.g.node("loop", (value,))
        return Tup([value], repeated=True)

    def compare(self, node: ast.Compare, env: dict):
        left = self.expr(node.left, env)
        result = None
        for op, right_node in zip(node.ops, node.comparators):
            right = self.expr(right_node, env)
            kind = type(op)
            if kind in (ast.Is, ast.IsNot):
                known = None
                for a, b in ((left, right), (right, left)):
                    if b is NONE:
                        known = a is NONE if a is NONE or type(a) is not Const else None
                        if type(a) is int or isinstance(a, (Mod, Fn, Tup)):
                            known = False
                        break
                value = UNKNOWN if known is None else Const(known if kind is ast.Is else not known)
            elif kind in (ast.In, ast.NotIn):
                value = UNKNOWN
                members = right.keys or right.items if type(right) is Tup else ()
                if type(right) is Tup and type(left) is Const and left is not UNKNOWN and all(
                    type(i) is Const and i is not UNKNOWN for i in members
                ):
                    found = any(i.value == left.value for i in (right.keys or right.items))
                    value = Const(found if kind is ast.In else not found)
            elif type(left) is Const and type(right) is Const:
                value = UNKNOWN
                if left is not UNKNOWN and right is not UNKNOWN and (left.value is not None or left is NONE):
                    try:
                        value = Const(_COMPARE[kind](left.value, right.value))
                    except TypeError:
                        value = UNKNOWN
            else:
                a, b = self.operand(left), self.operand(right)
                value = self.g.compare(_COMPARE_LABEL[kind], a, b) if (type(a) is int or type(b) is int) else UNKNOWN
            result = value if result is None else self.expr_and(result, value)
            left = right
        return result

    def expr_and(self, a, b):
        ta, tb = truth(a), truth(b)
        if ta is False or tb is False:
            return Const(False)
        if ta is True:
            return b
        if tb is True:
            return a
        if type(a) is int and type(b) is int:
            return self.g.node("and", (a, b))
        return UNKNOWN

    def operand(self, value):
        """A value as an operand of an operation: a node or a :class:`Const`."""
        kind = type(value)
        if kind is int or kind is Const:
            return value
        if kind is Lib:
            leaf = value.path.rsplit(".", 1)[-1]
            return Const(MATH_CONSTANTS[leaf]) if leaf in MATH_CONSTANTS else UNKNOWN
        if kind is Method and type(value.value) is int:  # a property read: x.T, x.data, x.real
            return self.tensor_method(value.value, value.name, [], {})
        if kind is Tup and value.items and not value.keys:
            parts = [self.operand(v) for v in flat_items(value)[0]]
            tensors = tuple(p for p in parts if type(p) is int)
            if len(tensors) == 1 and len(parts) == 1:
                return tensors[0]
            return self.g.node("cat", tensors) if tensors else UNKNOWN
        return UNKNOWN

    def binop(self, op: type, a, b):
        if type(a) is Tup and type(b) is Tup and op is ast.Add:  # list concatenation
            return Tup(a.items + b.items, a.repeated or b.repeated)
        if type(a) is Tup and op is ast.Mult:  # [layer] * n
            return Tup(list(a.items), True)
        x, y = self.operand(a), self.operand(b)
        g = self.g
        if op is ast.Add:
            return g.add([x, y])
        if op is ast.Sub:
            return g.sub(x, y)
        if op is ast.Mult:
            return g.mul([x, y])
        if op is ast.Div:
            return g.div(x, y)
        if op is ast.Pow:
            return g.power(x, y)
        if op is ast.MatMult:
            return self.matmul(x, y)
        if type(x) is Const and type(y) is Const:
            try:
                return Const(_ARITH[op](x.number(), y.number())) if x.number() is not None and y.number() is not None else UNKNOWN
            except (ZeroDivisionError, KeyError, TypeError, ValueError, OverflowError):
                return UNKNOWN
        label = _BINOP_LABEL.get(op, "binop")
        return g.node(label, (g.operand(x), g.operand(y)))

    def matmul(self, x, y):
        """``x @ W`` with a parameter ``W`` is a linear layer (its parameter made another way)."""
        g = self.g
        if type(x) is Const or type(y) is Const:
            return g.mul([x, y])
        for a, b in ((x, y), (y, x)):
            if g.label[b] == "param" and g.label[a] != "param":
                return g.node("linear:nobias", (a,), b)
        return g.node("matmul", (x, y))

    def attribute(self, base, attr: str):
        kind = type(base)
        if kind is Lib:
            return Lib(f"{base.path}.{attr}")
        if kind is Mod:
            if base.kind == "own":
                if attr in base.attrs:
                    return base.attrs[attr]
                found = self.method(base.cls, attr)
                if found is not None:
                    fn = Fn(found[0], base, found[1])
                    if any(_decorator_name(d) in ("property", "cached_property") for d in found[0].decorator_list):
                        return self.invoke(fn, [], {})  # self.kernel, a property: what it computes
                    return fn
                if attr == "training":
                    return Const(True)
                if self.library_base(base.cls) and not attr.startswith("_"):  # the library base's weights
                    base.attrs[attr] = self.g.fresh("param")
                    return base.attrs[attr]
                return Method(base, attr)
            if attr in ("weight", "bias"):
                return self.g.fresh("param")
            if base.kind == "op" and attr in ("forward", "__call__"):
                return base
            return Method(base, attr)
        if kind is int:
            if attr in META_NAMES:
                return UNKNOWN
            if attr in ("T", "mT", "H", "data", "real"):
                return base
            if attr in ("values",):
                return base
            return Method(base, attr)
        if kind is Tup:
            if attr in ("values", "indices") and len(base.items) == 2 and not base.repeated:
                return base.items[0 if attr == "values" else 1]
            return Method(base, attr)
        if kind is Super:
            return Method(base, attr)
        if kind is ClassRef:
            if attr == "apply":  # MyFunction.apply(x): an autograd function's forward(ctx, x)
                found = self.method(base.name, "forward")
                return Fn(found[0], None, found[1], lead=(UNKNOWN,)) if found is not None else UNKNOWN
            found = self.method(base.name, attr)
            return Fn(found[0], None, found[1]) if found is not None else UNKNOWN
        if kind is Const and canonical_name(attr) in RANDOM_NAMES:  # x.new_empty(n).bernoulli_(p): a random draw
            return Method(base, attr)
        return UNKNOWN

    def subscript(self, base, index: ast.expr, env: dict):
        if type(base) is Mod and base.kind in ("list", "seq") and type(base.items) is Tup:
            base = base.items
        if type(base) is Tup:
            key = self.expr(index, env)
            if base.repeated:
                return base.items[0] if base.items else UNKNOWN
            if type(key) is Const and key is not UNKNOWN:
                if base.keys is not None:
                    for k, v in zip(base.keys, base.items):
                        if type(k) is Const and k.value == key.value:
                            return v
                    return UNKNOWN
                if isinstance(key.value, int) and -len(base.items) <= key.value < len(base.items):
                    return base.items[key.value]
            if type(index) is ast.Slice:
                return Tup(base.items, base.repeated)
            if base.items and all(type(v) is Mod for v in base.items):
                return base.items[0] if len(base.items) == 1 else Mod("alt", items=list(base.items))
            return base.items[0] if len(base.items) == 1 else UNKNOWN
        if type(base) is not int:
            return UNKNOWN
        parts = index.elts if type(index) is ast.Tuple else [index]
        shape, operands = [], []
        for part in parts:
            if type(part) is ast.Slice:
                bounds = [p is not None for p in (part.lower, part.upper, part.step)]
                shape.append(":" if not any(bounds) else "".join("lus"[i] for i, b in enumerate(bounds) if b))
                continue
            if type(part) is ast.Constant and (part.value is None or part.value is Ellipsis):
                continue  # x[:, None] and x[...] change only the shape
            value = self.expr(part, env)
            if type(value) is int:
                shape.append("t")
                operands.append(value)
            else:
                shape.append("i")
        if all(s == ":" for s in shape):
            return base
        # One label for every slice (the dimensions are free), one node per slice written.
        return self.g.node("index", (base, *operands), ast.dump(index))


_COMPARE = {
    ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b,
}  # fmt: skip
_COMPARE_LABEL = {ast.Eq: "eq", ast.NotEq: "ne", ast.Lt: "lt", ast.LtE: "le", ast.Gt: "gt", ast.GtE: "ge"}
_ARITH = {ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b}
_BINOP_LABEL = {ast.FloorDiv: "floordiv", ast.Mod: "mod", ast.BitAnd: "and", ast.BitOr: "or", ast.BitXor: "xor",
                ast.LShift: "shift", ast.RShift: "shift"}  # fmt: skip
