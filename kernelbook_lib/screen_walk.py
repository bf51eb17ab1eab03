"""The kernel screen's walker: what an entry point executes, read from its AST.

Part of :mod:`kernelbook_lib.screen`. An abstract interpretation over a handful of value kinds
(tensor, Python value, kernel, launcher, function, class, object, ``nn`` layer, namespace, list,
dict), run from the entry point: it binds arguments, follows calls into the module's own
functions, methods, ``nn.Module`` objects and ``autograd.Function`` classes (depth limit, cycle
guard, memoised per argument kinds, a step budget), and records *events* with the context they
happen in: the default path (``()``) or an off-default branch (``("device", line)`` for the
non-CUDA branch of a device guard, ``("training", line)`` for the eval-mode branch,
``("flag", line)`` for a branch a value set in ``__init__`` rules out, ``("except", line)`` for
an exception handler). Nothing is executed.

Events: ``launch`` (a Triton kernel launched), ``compute`` (a PyTorch compute operation, named),
``library`` (``extern_kernels``, ``triton.ops``, Inductor helpers, ``torch.ops.aten``),
``precision`` (a cast below fp32), ``bypass`` (the reference module used), ``cache`` (an output
read back from a cache that outlives the call), ``try_fallback`` (PyTorch compute in the handler
of a ``try`` around a launch).
"""

from __future__ import annotations

import ast
from typing import Any

from kernelbook_lib.screen_calls import CallsMixin
from kernelbook_lib.screen_facts import BINOPS, ClassInfo, layer_op, NN_CONTAINERS, SMALL_GLUE, TreeFacts
from kernelbook_lib.screen_flow import FlowMixin
from kernelbook_lib.screen_values import (  # C, DEFAULT, LIST, MAX_STEPS, NONE, T, Frame, V: also for kernelbook_lib.screen
    C, CLASS, DATA, DEFAULT, DICT, fold, Frame, FUNC, KERNEL, LAMBDA, LAUNCHER, LAYER, LIST, MAX_NESTING,
    MAX_STEPS, MOD, NONE, NONE_VALUE, OBJ, PARAM, PARAM_BUFFERS, REF, S, SCALAR, SCALAR_TYPES,
    SETTING_NAMES, Stop, SUPER, T, tensor_value, UNK, UNKNOWN, V,
)


class Walker(FlowMixin, CallsMixin):
    """One walk from one entry point (see the module docstring)."""

    def __init__(self, facts: TreeFacts, reference_classes: frozenset[str] = frozenset(),
                 init_args: list[V] | None = None) -> None:
        self.facts = facts
        self.ref_classes = reference_classes - set(facts.classes) - set(facts.functions)
        self.init_args = init_args or []
        self.events: list[tuple] = []
        self.written: set[int] = set()
        self.buffers: dict[int, tuple[str, int, str]] = {}  # id -> (kind, line, what)
        self.stack: list[int] = []
        self.memo: dict[tuple, V] = {}
        self.steps = 0
        self.nesting = 0
        self.exhausted = False
        self.launches = 0
        self.kernels_seen: set[tuple[str, bool]] = set()
        # buffer -> (kernel, "constant" | "none"): passed only to kernels that store constants or nothing
        self.const_filled: dict[int, tuple[str, str]] = {}
        self.module_env: dict[str, V] = {}
        # (id of the layer or module, attribute) -> (that value, its buffer): `self.bn.weight`
        # is the same buffer each time it is read, so a kernel writing it is seen later.
        self.param_buffers: dict[tuple[int, str], tuple[V, frozenset]] = {}

    def event(self, kind: str, ctx: tuple, line: int, *payload: Any) -> None:
        self.events.append((kind, ctx, line, *payload))

    def new_buffer(self, kind: str, line: int, what: str) -> frozenset:
        ident = len(self.buffers) + 1
        self.buffers[ident] = (kind, line, what)
        return frozenset((ident,))

    def write(self, *values: V) -> None:
        for v in values:
            if v.allocs:
                self.written.update(v.allocs)
            if v.k == LIST and v.items:
                for item in v.items:
                    if item.allocs:
                        self.written.update(item.allocs)

    def text(self, node: ast.AST) -> str:
        name = self.facts.dotted(node)
        if name is not None:
            return name
        if type(node) is ast.Subscript:
            return self.text(node.value) + "[...]"
        if type(node) is ast.Call:
            return self.text(node.func) + "(...)"
        if type(node) is ast.Attribute:
            return self.text(node.value) + "." + node.attr
        if type(node) is ast.Constant:
            return repr(node.value)[:20]
        return {ast.BinOp: "(...)", ast.Lambda: "lambda"}.get(type(node), type(node).__name__.lower())

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            self.exhausted = True
            raise Stop

    def run_class(self, info: ClassInfo, method: str = "forward") -> Frame | None:
        """Build the module (its ``__init__`` with ``init_args``) and walk its ``method``."""
        try:
            obj = self.instantiate(info, self.init_args, 0)
        except Stop:  # the budget went on set-up code: walk forward on what was learnt
            obj = V(OBJ, ref=info)
            obj.attrs, obj.maybe_none = {"training": V(C, const=True, src="training")}, set()
            self.steps = 0
        fn = self.find_method(info, method)
        if fn is None:
            return None
        owner, node = fn
        return self.run_function(node, owner, obj)

    def run_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef, owner: ClassInfo | None = None,
                     self_v: V | None = None) -> Frame:
        """Walk the entry point ``node`` from the default path; its frame holds the returns."""
        frame = Frame(node.name, owner, self_v)
        args = node.args
        params = [*args.posonlyargs, *args.args]
        defaults = [None] * (len(params) - len(args.defaults)) + list(args.defaults)
        skip_first = self_v is not None or owner is not None and owner.is_function
        for i, (param, default) in enumerate(zip(params, defaults)):
            if i == 0 and skip_first:
                frame.env[param.arg] = self_v if self_v is not None else UNKNOWN
                continue
            frame.env[param.arg] = self.entry_param(param, default, node.lineno)
        for param, default in zip(args.kwonlyargs, args.kw_defaults):
            frame.env[param.arg] = self.entry_param(param, default, node.lineno)
        if args.vararg is not None:
            frame.env[args.vararg.arg] = V(LIST, items=[self.input_tensor(args.vararg.arg, node.lineno)])
        if args.kwarg is not None:
            frame.env[args.kwarg.arg] = V(DICT, items=[])
        self.stack.append(id(node))
        try:
            self.block(node.body, frame, DEFAULT)
        except Stop:
            pass
        finally:
            self.stack.pop()
        self.settle(frame)
        return frame

    def settle(self, frame: Frame) -> None:
        """Early returns without a kernel, followed by code that launches one, are fallbacks."""
        for start, end, ctx, launches in frame.pending:
            if self.launches > launches:
                self.retag(start, end, ctx)
        frame.pending.clear()

    def input_tensor(self, name: str, line: int) -> V:
        return tensor_value("input", self.new_buffer("input", line, name))

    def entry_param(self, param: ast.arg, default: ast.expr | None, line: int) -> V:
        ann = param.annotation
        names = {n.id if type(n) is ast.Name else n.attr for n in ast.walk(ann)
                 if type(n) in (ast.Name, ast.Attribute)} if ann is not None else set()
        if names & SCALAR_TYPES and not names & {"Tensor", "FloatTensor", "LongTensor"} \
                or not names and param.arg in SETTING_NAMES:
            return self.literal(default) if default is not None else SCALAR
        if default is not None and not (type(default) is ast.Constant and default.value is None):
            return self.literal(default)
        if default is not None:
            # `out=None`, `bias=None`, `dim=None`: not an input tensor, and the harness may pass
            # one or not, so `is None` tests on it stay undecided.
            value = V(NONE)
            value.maybe_none = {"self"}
            return value
        return self.input_tensor(param.arg, line)

    def literal(self, node: ast.expr | None) -> V:
        if node is None:
            return UNKNOWN
        if type(node) is ast.Constant:
            return NONE_VALUE if node.value is None else V(C, const=node.value)
        if type(node) is ast.Name and node.id in self.facts.constants:
            value = self.facts.constants[node.id]
            return NONE_VALUE if value is None else V(C, const=value)
        if type(node) is ast.UnaryOp and type(node.operand) is ast.Constant and type(node.op) is ast.USub:
            value = node.operand.value
            return V(C, const=-value) if isinstance(value, (int, float)) else SCALAR
        return SCALAR

    def mro(self, info: ClassInfo, depth: int = 0) -> list[ClassInfo]:
        found = [info]
        if depth < 8:
            for base in info.bases:
                base_info = self.facts.classes.get(base)
                if base_info is not None and base_info is not info:
                    found.extend(self.mro(base_info, depth + 1))
        return found

    def find_method(self, info: ClassInfo, name: str) -> tuple[ClassInfo, ast.FunctionDef] | None:
        for cls in self.mro(info):
            fn = cls.methods.get(name)
            if fn is not None:
                return cls, fn  # type: ignore[return-value]
        return None

    def layer_base(self, info: ClassInfo) -> tuple[str, str] | None:
        """The ``nn`` layer a class derives from (``class L(nn.Linear)``), as ``(op, display)``."""
        for cls in self.mro(info):
            for base in cls.bases:
                resolved = self.facts.resolve(base)
                last = resolved.rsplit(".", 1)[-1]
                if resolved.startswith("torch.nn.") and last not in ("Module", "Parameter") \
                        and last[:1].isupper() and last not in NN_CONTAINERS:
                    return layer_op(last), f"nn.{last}"
        return None

    def ref_base(self, info: ClassInfo) -> str | None:
        for cls in self.mro(info):
            for base in cls.bases:
                if base in self.ref_classes:
                    return base
        return None

    def instantiate(self, info: ClassInfo, args: list[V], line: int, kwargs: dict | None = None) -> V:
        obj = V(OBJ, ref=info)
        obj.attrs = {"training": V(C, const=True, src="training")}
        obj.maybe_none = set()
        init = self.find_method(info, "__init__")
        if init is not None:
            owner, node = init
            before = set(self.written)
            self.call_function(node, owner, obj, args, kwargs or {}, DEFAULT, line, init=True)
            # Set-up code initialising parameters (`self.weight.copy_(...)`) is not a kernel
            # writing them: they stay parameters.
            self.written -= {i for i in self.written - before if self.buffers[i][0] == "param"}
        return obj

    def param_tensor(self, owner: V | None, attr: str, line: int) -> V:
        """A parameter or buffer of a module (``self.conv.weight``): the same buffer each time."""
        key = (id(owner), attr)
        found = self.param_buffers.get(key)
        if found is None or found[0] is not owner:
            found = (owner, self.new_buffer("param", line, attr))  # type: ignore[assignment]
            self.param_buffers[key] = found  # type: ignore[assignment]
        return V(T, src=PARAM, allocs=found[1])  # type: ignore[index]

    def lookup(self, name: str, fr: Frame) -> V:
        found = fr.env.get(name)
        if found is not None:
            return found
        closure = fr.closure
        while closure is not None:
            found = closure.env.get(name)
            if found is not None:
                return found
            closure = closure.closure
        return self.global_value(name)

    def global_value(self, name: str) -> V:
        cached = self.module_env.get(name)
        if cached is not None:
            return cached
        facts = self.facts
        value: V
        if name in facts.kernels:
            value = V(KERNEL, ref=name)
        elif name in facts.functions:
            value = V(FUNC, ref=(facts.functions[name], None, None, None))
        elif name in facts.classes:
            value = V(CLASS, ref=facts.classes[name])
        elif name in self.ref_classes:
            value = V(REF, ref=name)
        elif name in facts.constants:
            const = facts.constants[name]
            value = NONE_VALUE if const is None else V(C, const=const)
        elif name in facts.imports.aliases or name in facts.imports.torch_roots:
            value = V(MOD, ref=facts.resolve(name))
        elif name in facts.globals_assigned:
            self.module_env[name] = UNKNOWN  # cycle guard
            value = self.global_expr(facts.globals_assigned[name], name)
        elif name in ("True", "False"):
            value = V(C, const=name == "True")
        else:
            value = UNKNOWN
        self.module_env[name] = value
        return value

    def global_expr(self, node: ast.expr, name: str) -> V:
        t = type(node)
        if t is ast.Dict:
            items = [self.global_expr(v, name) for v in node.values if v is not None]
            return V(DICT, items=items, src="persistent")
        if t is ast.Name:
            return self.global_value(node.id)
        if t is ast.Attribute:
            dotted = self.facts.dotted(node)
            if dotted is not None:
                return V(MOD, ref=self.facts.resolve(dotted))
        if t in (ast.List, ast.Tuple):
            return V(LIST, items=[self.global_expr(e, name) for e in node.elts])
        if t is ast.Call:
            func = self.facts.dotted(node.func) or ""
            resolved = self.facts.resolve(func)
            if resolved in ("functools.partial", "partial") and node.args:
                return self.global_expr(node.args[0], name)
            if resolved in ("dict", "collections.OrderedDict", "collections.defaultdict", "OrderedDict",
                            "defaultdict", "weakref.WeakValueDictionary", "weakref.WeakKeyDictionary"):
                return V(DICT, items=[], src="persistent")
            if func in self.facts.classes:
                return self.instantiate(self.facts.classes[func], [], node.lineno)
            if resolved.startswith("torch.nn.") and resolved.rsplit(".", 1)[-1][:1].isupper():
                last = resolved.rsplit(".", 1)[-1]
                return V(LAYER, ref=((layer_op(last), f"nn.{last}"),))
        if t is ast.Lambda:
            return V(LAMBDA, ref=(node, None))
        return SCALAR if t in (ast.BinOp, ast.JoinedStr) else UNKNOWN

    def ev(self, node: ast.expr, fr: Frame, ctx: tuple) -> V:
        self.step()
        self.nesting += 1
        try:
            if self.nesting > MAX_NESTING:
                self.exhausted = True
                return UNKNOWN
            return self._ev(node, fr, ctx)
        finally:
            self.nesting -= 1

    def _ev(self, node: ast.expr, fr: Frame, ctx: tuple) -> V:
        t = type(node)
        if t is ast.Name:
            return self.lookup(node.id, fr)
        if t is ast.Constant:
            return NONE_VALUE if node.value is None else V(C, const=node.value)
        if t is ast.Call:
            return self.call(node, fr, ctx)
        if t is ast.Attribute:
            return self.attribute(node, fr, ctx)
        if t is ast.Subscript:
            return self.subscript(node, fr, ctx)
        if t is ast.BinOp:
            left = self.ev(node.left, fr, ctx)
            right = self.ev(node.right, fr, ctx)
            return self.binop(node.op, left, right, node, fr, ctx)
        if t is ast.UnaryOp:
            operand = self.ev(node.operand, fr, ctx)
            if operand.k == T and type(node.op) in (ast.USub, ast.Invert):
                glue = self.glue([operand], "neg", [operand], node.lineno)
                if glue is not None:
                    return glue
                self.compute("neg", ctx, node.lineno, fr, f"negates {self.text(node.operand)}")
                return tensor_value()
            if operand.k == C and type(node.op) is ast.Not:
                return V(C, const=not operand.const, src=operand.src)
            if operand.k == C and type(node.op) is ast.USub and isinstance(operand.const, (int, float)):
                return V(C, const=-operand.const)
            return operand if operand.k in (T, S) else SCALAR
        if t is ast.Compare:
            left = self.ev(node.left, fr, ctx)
            others = [self.ev(c, fr, ctx) for c in node.comparators]
            if any(type(op) in (ast.Is, ast.IsNot, ast.In, ast.NotIn) for op in node.ops):
                return SCALAR
            tensors = [v for v in (left, *others) if v.k == T]
            glue = self.glue(tensors, "compare", [left, *others], node.lineno)
            if glue is not None:
                return glue
            if tensors:
                name = {ast.Gt: "gt", ast.GtE: "ge", ast.Lt: "lt", ast.LtE: "le", ast.Eq: "eq",
                        ast.NotEq: "ne"}.get(type(node.ops[0]), "compare")
                self.compute(name, ctx, node.lineno, fr, f"compares {self.text(node.left)}")
                return tensor_value()
            return SCALAR
        if t is ast.BoolOp:
            decided, kind = self.cond(node, fr, ctx)
            values = [self.ev(v, fr, ctx) for v in node.values]
            if decided is not None and kind in ("device", "training"):
                return V(C, const=decided, src=kind)  # `use_triton = x.is_cuda and y.is_cuda`
            for v in values:
                if v.k not in (C, S, NONE, UNK):
                    return v
            return SCALAR
        if t is ast.IfExp:
            value, _kind = self.cond(node.test, fr, ctx)
            if value is True:
                return self.ev(node.body, fr, ctx)
            if value is False:
                return self.ev(node.orelse, fr, ctx)
            a = self.ev(node.body, fr, ctx)
            b = self.ev(node.orelse, fr, ctx)
            for first, second in ((a, b), (b, a)):  # `out if out is not None else buf`: the buffer
                if first.maybe_none and "self" in first.maybe_none and second.k != NONE and not second.maybe_none:
                    return second
            if NONE in (a.k, b.k) and a.k != b.k:
                chosen = a if a.k != NONE else b
                maybe = V(chosen.k, ref=chosen.ref, allocs=chosen.allocs, small=chosen.small, src=chosen.src,
                          items=chosen.items, const=chosen.const)
                maybe.attrs, maybe.maybe_none = chosen.attrs, {"self"}
                return maybe
            return a if a.k != NONE else b
        if t is ast.Tuple or t is ast.List or t is ast.Set:
            return V(LIST, items=[self.ev(e, fr, ctx) for e in node.elts])
        if t is ast.Dict:
            return V(DICT, items=[self.ev(v, fr, ctx) for v in node.values if v is not None])
        if t is ast.Lambda:
            return V(LAMBDA, ref=(node, fr))
        if t in (ast.ListComp, ast.GeneratorExp, ast.SetComp, ast.DictComp):
            return self.comprehension(node, fr, ctx)
        if t is ast.Starred:
            return self.ev(node.value, fr, ctx)
        if t is ast.NamedExpr:
            value = self.ev(node.value, fr, ctx)
            self.bind(node.target, value, fr, ctx, node.value)
            return value
        if t is ast.JoinedStr or t is ast.FormattedValue:
            return SCALAR
        if t is ast.Await or t is ast.Yield or t is ast.YieldFrom:
            return self.ev(node.value, fr, ctx) if node.value is not None else NONE_VALUE
        if t is ast.Slice:
            for part in (node.lower, node.upper, node.step):
                if part is not None:
                    self.ev(part, fr, ctx)
            return SCALAR
        return UNKNOWN

    def comprehension(self, node: ast.AST, fr: Frame, ctx: tuple) -> V:
        saved = fr.env
        fr.env = dict(saved)
        try:
            for gen in node.generators:  # type: ignore[attr-defined]
                seq = self.ev(gen.iter, fr, ctx)
                self.bind(gen.target, self.element(seq, gen.iter), fr, ctx, None)
            if type(node) is ast.DictComp:
                self.ev(node.key, fr, ctx)
                item = self.ev(node.value, fr, ctx)
                return V(DICT, items=[item])
            item = self.ev(node.elt, fr, ctx)  # type: ignore[attr-defined]
            return V(LIST, items=[item])
        finally:
            fr.env = saved

    def attribute(self, node: ast.Attribute, fr: Frame, ctx: tuple) -> V:
        owner = self.ev(node.value, fr, ctx)
        attr = node.attr
        k = owner.k
        if k == OBJ:
            if owner.attrs is not None and attr in owner.attrs:
                return owner.attrs[attr]
            info: ClassInfo = owner.ref
            for cls in self.mro(info):
                if attr in cls.kernels:
                    return V(KERNEL, ref=attr)
                fn = cls.methods.get(attr)
                if fn is not None:
                    if any(self.facts.dotted(d) == "property" for d in fn.decorator_list):
                        return self.call_function(fn, cls, owner, [], {}, ctx, node.lineno)
                    return V(FUNC, ref=(fn, cls, owner, None))
            if attr in ("weight", "bias") and self.layer_base(info) is not None:
                return self.param_tensor(owner, attr, node.lineno)
            return UNKNOWN
        if k == MOD:
            return V(MOD, ref=f"{owner.ref}.{attr}")
        if k == CLASS:
            info = owner.ref
            for cls in self.mro(info):
                if attr in cls.kernels:
                    return V(KERNEL, ref=attr)
                fn = cls.methods.get(attr)
                if fn is not None:
                    return V(FUNC, ref=(fn, cls, None, None))
            return UNKNOWN
        if k == T:
            if attr == "shape":
                return V(S, src="shape")
            if attr in ("is_cuda", "is_cpu"):
                return V(C, const=attr == "is_cuda", src="device")
            if attr in ("dtype", "device", "ndim", "is_cuda", "is_cpu", "layout", "requires_grad",
                        "grad_fn", "is_leaf", "itemsize", "nbytes"):
                return SCALAR
            if attr in ("T", "mT", "H", "data", "real", "imag"):
                return V(T, src=owner.src, allocs=owner.allocs, small=owner.small)
            if attr == "grad":
                return tensor_value("computed")
            return UNKNOWN
        if k == LAYER:
            if attr in ("weight", "bias", "running_mean", "running_var", "in_proj_weight", "in_proj_bias",
                        "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                return self.param_tensor(owner, attr, node.lineno)
            if attr in ("eps", "momentum", "num_groups", "stride", "padding", "dilation", "groups",
                        "kernel_size", "in_channels", "out_channels", "in_features", "out_features",
                        "negative_slope", "training", "p", "normalized_shape", "output_padding",
                        "padding_mode", "num_features", "affine", "min_val", "max_val", "beta",
                        "threshold", "alpha", "lambd", "dim", "inplace", "scale_factor", "mode"):
                return SCALAR
            return UNKNOWN
        if k == KERNEL:
            return V(S, ref=owner.ref, src=attr)  # kernel.fn, kernel.run (handled as a call)
        if k in (S, C):
            return SCALAR
        if k == SUPER:
            return V(SUPER, ref=owner.ref, src=attr)
        return UNKNOWN

    def subscript(self, node: ast.Subscript, fr: Frame, ctx: tuple) -> V:
        base = self.ev(node.value, fr, ctx)
        index = node.slice
        k = base.k
        if k == KERNEL:
            return V(LAUNCHER, ref=base.ref)
        if k == T:
            self.ev(index, fr, ctx)
            return V(T, src=base.src, allocs=base.allocs, small=base.small)
        if k == LIST:
            items = base.items or []
            if type(index) is ast.Constant and isinstance(index.value, int) and -len(items) <= index.value < len(items):
                return items[index.value]
            if type(index) is ast.Slice:
                return base
            return self.element(base, None)
        if k == DICT:
            item = self.element(base, None)
            if base.src == "persistent" and item.k in (T, UNK):
                return V(T, src="cached")
            return item
        if k == LAYER:
            return base
        if k in (S, C):
            return SCALAR
        if k == UNK:
            return UNKNOWN
        return UNKNOWN

    def binop(self, op: ast.operator, left: V, right: V, node: ast.AST, fr: Frame, ctx: tuple) -> V:
        tensors = [v for v in (left, right) if v.k == T]
        name = BINOPS.get(type(op), "binary")
        if type(op) is ast.MatMult and (tensors or UNK in (left.k, right.k)):
            if tensors and self.from_params([left, right]):  # `self.w1 @ self.w2`: folding weights
                return self.param_result("matmul", node.lineno)
            self.compute("matmul", ctx, node.lineno, fr, "uses @")
            return tensor_value()
        if not tensors:
            if left.k == LIST or right.k == LIST:
                return V(LIST, items=(left.items or []) + (right.items or []))
            if left.k == C and right.k == C:
                try:
                    return V(C, const=fold(op, left.const, right.const))
                except Exception:  # noqa: BLE001 - folding literals only
                    return SCALAR
            return self.scalar([left, right]) if UNK not in (left.k, right.k) else UNKNOWN
        glue = self.glue(tensors, name, [left, right], getattr(node, "lineno", 0))
        if glue is not None:
            return glue
        self.compute(name, ctx, node.lineno, fr, f"computes {self.optext(node, name)}")
        return tensor_value()

    def optext(self, node: ast.AST, name: str) -> str:
        if type(node) is ast.BinOp:
            symbol = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**", "matmul": "@"}.get(name, name)
            return f"{self.text(node.left)} {symbol} {self.text(node.right)}"
        if type(node) is ast.AugAssign:
            return f"{self.text(node.target)} {name}="
        return name

    def glue(self, tensors: list[V], op: str, operands: list[V], line: int) -> V | None:
        """The value of an operation that is glue, or None when it is compute: over a kernel's
        partial results (``partials.sum()``, ``total / n``), over fresh buffers no kernel has
        written (a dropout mask drawn from ``rand``), or over the module's parameters, buffers
        and constants only (``bn.weight / torch.sqrt(bn.running_var + bn.eps)``): nothing that
        depends on the inputs. ``operands``: every operand, tensors or not."""
        if not tensors:
            return None
        if all(v.small for v in tensors) and op in SMALL_GLUE:
            return V(T, small=True, src="computed")
        if all(v.src == "alloc" and v.allocs and not (v.allocs & self.written) for v in tensors):
            return V(T, src="alloc", allocs=frozenset().union(*(v.allocs for v in tensors)),
                     small=all(v.small for v in tensors))
        if self.from_params(operands):
            return self.param_result(op, line)
        return None

    def from_params(self, operands: list[V]) -> bool:
        """Whether ``operands`` derive only from the module's parameters, buffers and constants,
        at least one being a parameter or a value computed from parameters: tensors of kind
        :data:`PARAM` (or fresh buffers) that are or view no input and nothing a kernel (or
        unknown code) wrote, Python values not read from other tensors' data, literals. An
        input, a computed tensor, a kernel's partial results or an unknown value rule it out."""
        found = False
        stack, seen = list(operands), set()
        while stack:
            v = stack.pop()
            k = v.k
            if k == T:
                if v.src == PARAM:
                    found = True
                elif v.src != "alloc" or not v.allocs:
                    return False
                if v.allocs & self.written or any(self.buffers[i][0] not in PARAM_BUFFERS for i in v.allocs):
                    return False
            elif k == S:
                if v.src == DATA:
                    return False
                found = found or v.src == PARAM
            elif k == LIST:
                if v.items is None:
                    return False
                if id(v) not in seen:
                    seen.add(id(v))
                    stack.extend(v.items)
            elif k in (UNK, DICT, REF, OBJ, LAYER):
                return False
        return found

    def param_result(self, op: str, line: int) -> V:
        """A tensor computed from parameters only: a fresh buffer of its own, so that a kernel
        writing into it later is seen."""
        return V(T, src=PARAM, allocs=self.new_buffer("param", line, f"{op} of parameters at line {line}"))

    def scalar(self, values: list[V]) -> V:
        """A Python value computed from ``values``: :data:`PARAM` when only from parameters,
        :data:`DATA` when read from other tensor data, else a plain setting."""
        data = [v for v in values if v.k == T or v.k == S and v.src in (PARAM, DATA)]
        if not data:
            return SCALAR
        return V(S, src=PARAM if self.from_params(data) else DATA)

    def compute(self, op: str, ctx: tuple, line: int, fr: Frame, what: str) -> None:
        if fr.init:
            return
        self.event("compute", ctx, line, op, f"{fr.name} {what}")

    def precision(self, dtype: str, ctx: tuple, line: int, fr: Frame, what: str) -> None:
        if not fr.init:
            self.event("precision", ctx, line, dtype, f"{fr.name} {what}")
