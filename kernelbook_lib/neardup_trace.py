"""The operations a module's ``forward`` runs (``neardup-v2``), found by walking its syntax tree.

:func:`trace` finds the module's main class (the last class with a ``forward`` that no other
class builds), builds it from its ``__init__`` (with the constants of ``get_init_inputs()``), and
walks ``forward`` with its inputs as symbolic values: the arguments ``get_inputs()`` gives (a
number it gives is a constant) and every argument without a default or defaulting to None (an
optional mask is part of the module). Every operation on a tensor becomes a node of a
:class:`~kernelbook_lib.neardup_ops.Graph`; a call goes into what it calls: a sub-module built in
``__init__`` (an ``nn.Sequential`` applies its layers in order, a class of the module is walked
like the main one), a helper method, a property or a function of the module. Layout and dtype
changes are not operations (``view``, ``permute``, ``contiguous``, ``float``), unless they are all
the module does. A branch whose condition is known (``if self.bias is not None`` when the bias is
a parameter, ``hasattr(self, 'proj')``, a flag set by ``get_init_inputs()`` or a default) takes
one side; otherwise both are walked and their values joined (``phi``). A loop over a list the
module wrote out is unrolled; a loop whose count is a constant is walked once and marked
``loop`` (its count is a constant of the task). What does not reach an output is not part of the
task (dead code falls away). The code is parsed, never run; a walk over :data:`MAX_STEPS` steps
or :data:`MAX_DEPTH` nested calls stops (:class:`TraceError`).
"""

from __future__ import annotations

import ast

from kernelbook_lib.neardup_exprs import Expressions
from kernelbook_lib.neardup_names import RANDOM_NAMES, UNKNOWN, Const, canonical_name
from kernelbook_lib.neardup_ops import Graph
from kernelbook_lib.neardup_values import MAX_DEPTH, MAX_STEPS, MAX_UNROLL, NONE, Fn, Group, Mod, Ret, TraceError, Tup, literal, truth

class Tracer(Expressions):
    """One module's walk (see the module docstring)."""

    def __init__(self, tree: ast.Module, graph: Graph) -> None:
        self.g = graph
        self.classes: dict[str, ast.ClassDef] = {}
        self.functions: dict[str, ast.FunctionDef] = {}
        self.globals: dict[str, object] = {}
        self.aliases: dict[str, str] = {}
        self.steps = 0
        self.depth = 0
        self.loops: list[int] = []  # the symbolic loops being walked (their ids)
        self.loop_count = 0
        self.keep_layout = False  # layout changes as operations (a module that does nothing else)
        self._mro: dict[str, list[ast.ClassDef]] = {}
        self._methods: dict[tuple[str, str, int], tuple[ast.FunctionDef, str] | None] = {}
        for node in tree.body:
            kind = type(node)
            if kind is ast.ClassDef:
                self.classes[node.name] = node
            elif kind in (ast.FunctionDef, ast.AsyncFunctionDef):
                self.functions[node.name] = node
            elif kind in (ast.Import, ast.ImportFrom):
                self.imports(node)
            elif kind is ast.Assign and len(node.targets) == 1 and type(node.targets[0]) is ast.Name:
                self.globals[node.targets[0].id] = literal(node.value)

    def imports(self, node: ast.Import | ast.ImportFrom) -> None:
        if type(node) is ast.Import:
            for alias in node.names:
                if alias.asname:
                    self.aliases[alias.asname] = alias.name
                else:
                    root = alias.name.split(".")[0]
                    self.aliases[root] = root
        elif node.module and not node.level:
            for alias in node.names:
                if alias.name != "*":
                    self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def tick(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise TraceError("too many steps")

    # classes ----------------------------------------------------------------------------------

    def mro(self, name: str) -> list[ast.ClassDef]:
        found = self._mro.get(name)
        if found is None:
            found = self._mro[name] = self._bases(name)
        return found

    def _bases(self, name: str) -> list[ast.ClassDef]:
        out, todo, seen = [], [name], set()
        while todo:
            current = todo.pop(0)
            if current in seen or current not in self.classes:
                continue
            seen.add(current)
            cls = self.classes[current]
            out.append(cls)
            todo += [b.id if type(b) is ast.Name else b.attr if type(b) is ast.Attribute else "" for b in cls.bases]
        return out

    def library_base(self, name: str) -> str | None:
        """The label of the library layer a class derives from (``class C(nn.Conv2d)``)."""
        for cls in self.mro(name):
            for base in cls.bases:
                path = self.path_of(base)
                if path and path.startswith("torch.nn.") and path.rsplit(".", 1)[-1] not in ("Module", "ModuleList", "Sequential"):
                    return canonical_name(path.rsplit(".", 1)[-1])
        return None

    def method(self, cls: str, name: str, start: int = 0) -> tuple[ast.FunctionDef, str] | None:
        key = (cls, name, start)
        if key not in self._methods:
            self._methods[key] = next(
                ((item, c.name) for c in self.mro(cls)[start:] for item in c.body
                 if type(item) in (ast.FunctionDef, ast.AsyncFunctionDef) and item.name == name),
                None,
            )  # fmt: skip
        return self._methods[key]

    def instantiate(self, cls: str, args: list, kwargs: dict) -> Mod:
        inst = Mod("own", cls=cls, attrs={})
        for c in reversed(self.mro(cls)):  # class attributes, the most derived last
            for item in c.body:
                if type(item) is ast.Assign and len(item.targets) == 1 and type(item.targets[0]) is ast.Name:
                    inst.attrs[item.targets[0].id] = literal(item.value)
        init = self.method(cls, "__init__")
        if init is not None:
            self.invoke(Fn(init[0], inst, init[1]), args, kwargs)
        return inst

    # calls into the module's own code --------------------------------------------------------

    def invoke(self, fn: Fn, args: list, kwargs: dict):
        self.tick()
        node = fn.node
        if fn.lead:
            args = [*fn.lead, *args]
        if self.depth >= MAX_DEPTH:
            return self.opaque("call", args, kwargs)
        a = node.args
        positional = [*a.posonlyargs, *a.args]
        env: dict[str, object] = {}
        static = type(node) is not ast.Lambda and any(type(d) is ast.Name and d.id == "staticmethod" for d in node.decorator_list)
        if fn.owner is not None and type(node) is not ast.Lambda and not static and positional:
            env[positional[0].arg] = fn.owner
            env["__self__"] = fn.owner
            positional = positional[1:]
        defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
        for i, (param, default) in enumerate(zip(positional, defaults)):
            if i < len(args):
                env[param.arg] = args[i]
            elif param.arg in kwargs:
                env[param.arg] = kwargs[param.arg]
            else:
                env[param.arg] = self.default(default)
        if a.vararg:
            env[a.vararg.arg] = Tup(list(args[len(positional) :]))
        for param, default in zip(a.kwonlyargs, a.kw_defaults):
            env[param.arg] = kwargs.get(param.arg, self.default(default))
        if a.kwarg:
            env[a.kwarg.arg] = Tup(list(kwargs.values()), keys=[Const(k) for k in kwargs])
        env["__class__"] = fn.cls
        self.depth += 1
        try:
            if type(node) is ast.Lambda:
                return self.expr(node.body, env)
            ret = self.block(node.body, env)
        finally:
            self.depth -= 1
        return NONE if ret is None or ret.raised else ret.value

    def default(self, node: ast.expr | None):
        return UNKNOWN if node is None else literal(node)

    def opaque(self, label: str, args: list, kwargs: dict):
        operands = [self.operand(v) for v in [*args, *kwargs.values()]]
        return self.g.call(label, [o for o in operands if type(o) is int])

    # statements -------------------------------------------------------------------------------

    def block(self, body: list[ast.stmt], env: dict) -> Ret | None:
        for i, node in enumerate(body):
            self.tick()
            kind = type(node)
            if kind is ast.Return:
                return Ret(self.expr(node.value, env) if node.value is not None else NONE)
            if kind is ast.Raise:
                return Ret(NONE, raised=True)
            if kind is ast.If:
                ret = self.branch(node, body[i + 1 :], env)
                if ret is not None:
                    return ret[0] if ret[0] is not None else None
                continue
            if kind in (ast.For, ast.AsyncFor, ast.While):
                ret = self.loop(node, env)
                if ret is not None:
                    return ret
                continue
            if kind in (ast.With, ast.AsyncWith):
                ret = self.block(node.body, env)
                if ret is not None:
                    return ret
                continue
            if kind is ast.Try or kind.__name__ == "TryStar":
                ret = self.block(node.body + node.orelse + node.finalbody, env)
                if ret is not None:
                    return ret
                continue
            if kind is ast.Break:
                return None
            self.simple(node, env)
        return None

    def simple(self, node: ast.stmt, env: dict) -> None:
        kind = type(node)
        if kind is ast.Assign:
            value = self.expr(node.value, env)
            for target in node.targets:
                self.assign(target, value, env)
        elif kind is ast.AnnAssign:
            if node.value is not None:
                self.assign(node.target, self.expr(node.value, env), env)
        elif kind is ast.AugAssign:
            current = self.expr(node.target, env)
            self.assign(node.target, self.binop(type(node.op), current, self.expr(node.value, env)), env)
        elif kind is ast.Expr:
            self.statement_call(node.value, env)
        elif kind in (ast.FunctionDef, ast.AsyncFunctionDef):
            env[node.name] = Fn(node)
        elif kind in (ast.Import, ast.ImportFrom):
            self.imports(node)
        # pass, assert, global, delete, class definitions, continue: nothing on the path

    def statement_call(self, node: ast.expr, env: dict) -> None:
        """An expression statement: an in-place method (``x.add_(y)``, ``layers.append(m)``,
        ``self.register_buffer(...)``) changes what its receiver holds; anything else is off
        the path unless it is read."""
        if type(node) is not ast.Call or type(node.func) is not ast.Attribute:
            if type(node) is ast.Call:
                self.expr(node, env)
            return
        name = node.func.attr
        receiver = self.expr(node.func.value, env)
        args = [self.expr(a, env) for a in node.args]
        if type(receiver) is Mod and receiver.kind in ("list", "seq") and name in ("append", "extend", "add_module", "insert"):
            receiver = receiver.items
            args = args[1:] if name in ("add_module", "insert") else args
        if type(receiver) is Tup:
            if name in ("append", "add_module", "insert") and args:
                self.append_item(receiver, args[0])
            elif name == "extend" and args and type(args[0]) is Tup:
                for item in args[0].items:
                    self.append_item(receiver, item)
                receiver.repeated |= args[0].repeated
            return
        if type(receiver) is Mod and receiver.kind == "own":
            key = args[0].value if args and type(args[0]) is Const and isinstance(args[0].value, str) else None
            if name in ("register_buffer", "register_parameter", "add_module") and key is not None:
                value = args[1] if len(args) > 1 else UNKNOWN
                receiver.attrs[key] = self.g.fresh("param") if name != "add_module" and value is not NONE else value
                return
        if type(receiver) is Const and type(node.func.value) is ast.Name and canonical_name(name) in RANDOM_NAMES:
            env[node.func.value.id] = self.g.fresh("rand")  # torch.zeros(n).normal_(): a random draw
            return
        holder = node.func.value
        if type(holder) is ast.Attribute and holder.attr == "data":  # x.data.masked_fill_(...) changes x
            holder = holder.value
        if type(receiver) is int and name.endswith("_") and not name.startswith("_") and type(holder) is ast.Name:
            kwargs = {k.arg: self.expr(k.value, env) for k in node.keywords if k.arg}
            env[holder.id] = self.tensor_method(receiver, name, args, kwargs)
            return
        if type(receiver) is int and type(node.func.value) is ast.Name and name in ("masked_fill_", "copy_"):
            return
        self.call_value(self.attribute(receiver, name), args, {k.arg: self.expr(k.value, env) for k in node.keywords if k.arg})

    def append_item(self, items: Tup, value) -> None:
        """``items.append(value)``; inside a loop walked once, into that loop's :class:`Group`."""
        if not self.loops:
            items.items.append(value)
            return
        last = items.items[-1] if items.items else None
        if type(last) is Group and last.loop == self.loops[-1]:
            last.items.append(value)
        else:
            items.items.append(Group([value], self.loops[-1]))

    def assign(self, target: ast.expr, value, env: dict) -> None:
        kind = type(target)
        if kind is ast.Name:
            env[target.id] = value
        elif kind in (ast.Tuple, ast.List):
            elts = target.elts
            star = next((i for i, e in enumerate(elts) if type(e) is ast.Starred), None)
            for i, element in enumerate(elts):
                if type(element) is ast.Starred:
                    self.assign(element.value, UNKNOWN, env)
                    continue
                index = i if star is None or i < star else i - len(elts)
                self.assign(element, self.item(value, index, len(elts)), env)
        elif kind is ast.Attribute:
            owner = self.expr(target.value, env)
            if type(owner) is Mod and owner.kind == "own":
                owner.attrs[target.attr] = value
        elif kind is ast.Subscript:
            base = self.expr(target.value, env)
            if type(base) in (int, Const) and type(target.value) is ast.Name:  # out[:, i] = ... on a tensor
                kids = tuple(k for k in (base, self.operand(value)) if type(k) is int)
                if kids:
                    env[target.value.id] = self.g.node("setitem", kids)
            elif type(base) is Tup and not base.repeated:
                key = self.expr(target.slice, env)
                if base.keys is not None and type(key) is Const:
                    base.keys.append(key)
                    base.items.append(value)
        elif kind is ast.Starred:
            self.assign(target.value, value, env)

    def item(self, value, index: int, count: int):
        """Item ``index`` of ``value`` unpacked into ``count`` names."""
        if type(value) is Tup:
            if value.repeated:
                return value.items[0] if value.items else UNKNOWN
            return value.items[index] if -len(value.items) <= index < len(value.items) else UNKNOWN
        if type(value) is int:  # q, k, v = qkv (split along the first dimension)
            return self.g.node("part", (value,), index % count)
        return UNKNOWN

    def snapshot(self, env: dict) -> list[tuple[Mod, dict]]:
        return [(v, dict(v.attrs)) for v in env.values() if type(v) is Mod and v.kind == "own"]

    def branch(self, node: ast.If, rest: list[ast.stmt], env: dict):
        """Walk an ``if``; returns None to go on with the statements after it, or a one-tuple
        with what the block returns (it returned in the branch or after it)."""
        known = truth(self.expr(node.test, env))
        if known is not None:
            ret = self.block(node.body if known else node.orelse, env)
            return None if ret is None else (ret,)
        before = self.snapshot(env)
        then_env = dict(env)
        then_ret = self.block(node.body, then_env)
        then_attrs = [dict(m.attrs) for m, _ in before]
        for m, attrs in before:
            m.attrs.clear()
            m.attrs.update(attrs)
        else_env = dict(env)
        else_ret = self.block(node.orelse, else_env)
        for (m, _), attrs in zip(before, then_attrs):
            merged = self.join_dicts(attrs, m.attrs)
            m.attrs.clear()
            m.attrs.update(merged)
        if then_ret is not None and else_ret is not None:
            return (self.join_returns(then_ret, else_ret),)
        if then_ret is None and else_ret is None:
            env.clear()
            env.update(self.join_dicts(then_env, else_env))
            return None
        # One side returned: the statements after the if run on the other side only.
        returned, going_on = (then_ret, else_env) if then_ret is not None else (else_ret, then_env)
        after = self.block(rest, going_on)
        env.clear()
        env.update(going_on)
        if after is None:
            return (returned,) if not returned.raised else (None,)
        return (self.join_returns(returned, after),)

    def join_returns(self, a: Ret, b: Ret) -> Ret:
        if a.raised:
            return b
        if b.raised:
            return a
        return Ret(self.join(a.value, b.value))

    def join_dicts(self, a: dict, b: dict) -> dict:
        out = dict(a)
        for key, value in b.items():
            out[key] = self.join(a[key], value) if key in a else value
        return out

    def join(self, a, b):
        """One value for two branches' values."""
        if a is b:
            return a
        if type(a) is int and type(b) is int:
            return self.g.node("phi", (a, b) if a < b else (b, a)) if a != b else a
        if type(a) is int or type(b) is int:
            tensor = a if type(a) is int else b
            other = self.operand(b if type(a) is int else a)
            return self.g.node("phi", (tensor, other)) if type(other) is int else tensor
        if isinstance(a, Mod) and isinstance(b, Mod):
            return Mod("alt", items=[a, b])
        if type(a) is Const and type(b) is Const:
            return a if a.value == b.value and type(a.value) is type(b.value) else UNKNOWN
        return a if type(b) is Const else b

    def loop(self, node: ast.For | ast.While, env: dict) -> Ret | None:
        if type(node) is not ast.While:
            iterable = self.expr(node.iter, env)
            items = self.iteration(iterable)
            if items is not None:
                for item in items:
                    self.assign(node.target, item, env)
                    ret = self.block(node.body, env)
                    if ret is not None:
                        return ret
                return self.block(node.orelse, env)
            self.assign(node.target, self.element(iterable), env)
        before = dict(env)
        self.loop_count += 1
        self.loops.append(self.loop_count)
        try:
            ret = self.block(node.body, env)
        finally:
            self.loops.pop()
        for name, value in env.items():
            if type(value) is int and before.get(name) is not value:
                env[name] = self.g.node("loop", (value,))
        if ret is not None:
            return ret
        return self.block(node.orelse, env)

    def iteration(self, iterable) -> list | None:
        """The items of a loop over a list written out (unrolled), or None."""
        if type(iterable) is Mod and iterable.kind in ("list", "seq") and type(iterable.items) is Tup:
            iterable = iterable.items
        if type(iterable) is Tup and not iterable.repeated and len(iterable.items) <= MAX_UNROLL:
            if not any(type(v) is Group for v in iterable.items):
                return list(iterable.items)
        return None

    def element(self, iterable):
        if type(iterable) is Mod and iterable.kind in ("list", "seq") and type(iterable.items) is Tup:
            iterable = iterable.items
        if type(iterable) is Tup:
            items = [i for v in iterable.items for i in (v.items if type(v) is Group else [v])]
            if not items:
                return UNKNOWN
            if len(items) > 1 and all(type(v) is Mod for v in items):
                return Mod("alt", items=items)
            return items[0]
        if type(iterable) is int:
            return self.g.node("part", (iterable,))
        return UNKNOWN

# --- the entry point -------------------------------------------------------------------------


def _number(node: ast.expr, names: dict[str, ast.expr]) -> bool:
    """A number written in the harness (``3.14``, ``-1``, a name bound to one)."""
    if type(node) is ast.Name and node.id in names:
        node = names[node.id]
    if type(node) is ast.UnaryOp and type(node.op) is ast.USub:
        node = node.operand
    return type(node) is ast.Constant and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)


def _harness(tree: ast.Module) -> tuple[int | None, set[int], list, dict]:
    """How many inputs ``get_inputs()`` gives (None: not a literal list) and which of them are
    numbers (a scalar argument is a constant, not a tensor), and the constant arguments
    ``get_init_inputs()`` gives the constructor (``[[args], {kwargs}]``)."""
    inputs, scalars, args, kwargs = None, set(), [], {}
    names: dict[str, ast.expr] = {}
    for node in tree.body:
        if type(node) is ast.Assign and len(node.targets) == 1 and type(node.targets[0]) is ast.Name:
            names[node.targets[0].id] = node.value
    for node in tree.body:
        if type(node) is not ast.FunctionDef or node.name not in ("get_inputs", "get_init_inputs"):
            continue
        returned = next((s.value for s in node.body if type(s) is ast.Return and s.value is not None), None)
        if node.name == "get_inputs":
            local = dict(names)
            for s in node.body:
                if type(s) is ast.Assign and len(s.targets) == 1 and type(s.targets[0]) is ast.Name:
                    local[s.targets[0].id] = s.value
            if type(returned) in (ast.List, ast.Tuple) and not any(type(e) is ast.Starred for e in returned.elts):
                inputs = len(returned.elts)
                scalars = {k for k, e in enumerate(returned.elts) if _number(e, local)}
        elif type(returned) in (ast.List, ast.Tuple) and len(returned.elts) == 2:
            first, second = returned.elts
            if type(first) in (ast.List, ast.Tuple):
                args = [literal(e) for e in first.elts]
            if type(second) is ast.Dict:
                kwargs = {k.value: literal(v) for k, v in zip(second.keys, second.values)
                          if type(k) is ast.Constant and isinstance(k.value, str)}  # fmt: skip
    return inputs, scalars, args, kwargs


def main_class(tree: ast.Module, tracer: Tracer) -> str | None:
    """The module's class: the last class with a ``forward`` that no other class of the module
    names (KernelBook puts the class a row is about last; KernelBench's ``Model`` may come
    before the helper classes it builds), else the last class with a ``forward``."""
    classes = [node for node in tree.body if type(node) is ast.ClassDef and tracer.method(node.name, "forward") is not None]
    if len(classes) < 2:
        return classes[0].name if classes else None
    names = {node.name for node in classes}
    named: set[str] = set()
    for node in tree.body:
        if type(node) is ast.ClassDef:
            for sub in ast.walk(node):
                kind = type(sub)
                ident = sub.id if kind is ast.Name else sub.attr if kind is ast.Attribute else None
                if ident in names and ident != node.name:
                    named.add(ident)
    roots = [node for node in classes if node.name not in named]
    return (roots or classes)[-1].name


def _outputs(value, g: Graph, out: list[int], depth: int = 0) -> None:
    if type(value) is int:
        if value not in out:
            out.append(value)
    elif type(value) is Tup and depth < 4:
        for item in value.items:
            _outputs(item, g, out, depth + 1)


def trace(tree: ast.Module, budget: int = 4000) -> tuple[Graph, list[int]]:
    """The operation graph of the forward path of the module ``tree`` and its output nodes.
    Raises :class:`TraceError` when there is no forward or the walk is too large. A module
    whose forward only changes the layout of its input (``view``, ``permute``) is walked again
    with those as operations: they are all it does."""
    g, outputs = _trace(tree, budget, keep_layout=False)
    if all(not g.kids[o] for o in outputs):
        g, outputs = _trace(tree, budget, keep_layout=True)
    return g, outputs


def _trace(tree: ast.Module, budget: int, keep_layout: bool) -> tuple[Graph, list[int]]:
    g = Graph(budget)
    tracer = Tracer(tree, g)
    tracer.keep_layout = keep_layout
    entry = main_class(tree, tracer)
    if entry is None:
        raise TraceError("no class with a forward")
    inputs, scalars, init_args, init_kwargs = _harness(tree)
    try:
        inst = tracer.instantiate(entry, init_args, init_kwargs)
        forward, owner = tracer.method(entry, "forward")
        a = forward.args
        static = any(type(d) is ast.Name and d.id == "staticmethod" for d in forward.decorator_list)
        params = [*a.posonlyargs, *a.args][0 if static else 1 :]
        defaults = [None] * (len(params) - len(a.defaults)) + list(a.defaults)
        # The inputs: the arguments get_inputs() gives, and every argument without a default or
        # with None (an optional mask is part of the module whether or not the harness gives
        # it); an argument with another default (a flag) keeps it.
        args = []
        for k, default in enumerate(defaults):
            given = inputs is not None and k < inputs
            if not given and default is not None and not (type(default) is ast.Constant and default.value is None):
                break
            # one label for every input (their order is naming); a number the harness passes is a constant
            args.append(UNKNOWN if k in scalars else g.leaf("in", k))
        value = tracer.invoke(Fn(forward, inst, owner), args, {})
    except (OverflowError, RecursionError) as exc:
        raise TraceError(type(exc).__name__) from exc
    outputs: list[int] = []
    _outputs(value, g, outputs)
    return g, outputs
