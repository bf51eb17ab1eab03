"""The kernel screen's control flow: statements, branches and their contexts, bindings.

Part of :mod:`kernelbook_lib.screen_walk` (a mixin of its ``Walker``). Which branch of an ``if``
runs by default (device guards: the CUDA side; ``self.training``: the training side; values set
in ``__init__`` or literal defaults: the side they select; a default side that raises: the other
one), what an undecided branch leaves bound, ``try`` handlers, assignments and unpacking.
"""

from __future__ import annotations

import ast

from kernelbook_lib.screen_values import (
    C, CLASS, DEFAULT, DICT, EXCEPTIONS_FOR_IMPORTS, Frame, FUNC, KERNEL, LAMBDA, LAUNCHER, LAYER,
    LIST, MAX_NESTING, MOD, NONE, NONE_VALUE, OBJ, PARAM, REF, S, SCALAR, T, UNKNOWN, V,
)


class FlowMixin:
    """Statements and conditions of :class:`kernelbook_lib.screen_walk.Walker`."""

    def block(self, stmts: list[ast.stmt], fr: Frame, ctx: tuple) -> tuple[bool, tuple]:
        """Run statements; ``(terminated, context after)``."""
        self.nesting += 1
        try:
            if self.nesting > MAX_NESTING:
                self.exhausted = True
                return False, ctx
            for stmt in stmts:
                done, ctx = self.stmt(stmt, fr, ctx)
                if done:
                    return done, ctx
            return False, ctx
        finally:
            self.nesting -= 1

    def stmt(self, node: ast.stmt, fr: Frame, ctx: tuple) -> tuple[bool, tuple]:
        self.step()
        t = type(node)
        if t is ast.Expr:
            value = node.value
            if type(value) is not ast.Constant:  # docstrings are not code
                self.ev(value, fr, ctx)
            return False, ctx
        if t is ast.Assign:
            value = self.ev(node.value, fr, ctx)
            for target in node.targets:
                self.bind(target, value, fr, ctx, node.value)
            return False, ctx
        if t is ast.AnnAssign:
            if node.value is not None:
                self.bind(node.target, self.ev(node.value, fr, ctx), fr, ctx, node.value)
            return False, ctx
        if t is ast.AugAssign:
            target = self.ev(node.target, fr, ctx)
            value = self.ev(node.value, fr, ctx)
            result = self.binop(node.op, target, value, node, fr, ctx)
            if target.k == T and result.k == T:  # in place: the same buffer, now computed on
                if not (result.src in ("alloc", PARAM) or result.small and target.small):
                    self.write(target)
                src = PARAM if result.src == PARAM else target.src  # `scale *= self.gain`
                result = V(T, src=src, allocs=target.allocs, small=result.small)
            if type(node.target) is ast.Name:
                fr.env[node.target.id] = result
            elif type(node.target) is ast.Attribute:
                self.bind(node.target, result, fr, ctx, node.value)
            return False, ctx
        if t is ast.Return:
            value = self.ev(node.value, fr, ctx) if node.value is not None else NONE_VALUE
            fr.returns.append((ctx, value, node))
            return "return", ctx
        if t is ast.If:
            return self.if_stmt(node, fr, ctx)
        if t is ast.For or t is ast.AsyncFor:
            seq = self.ev(node.iter, fr, ctx)
            self.bind(node.target, self.element(seq, node.iter), fr, ctx, None)
            self.block(node.body, fr, ctx)
            self.block(node.orelse, fr, ctx)
            return False, ctx
        if t is ast.While:
            self.block(node.body, fr, ctx)
            self.block(node.orelse, fr, ctx)
            return False, ctx
        if t is ast.Try or t is getattr(ast, "TryStar", None):
            return self.try_stmt(node, fr, ctx)
        if t is ast.With or t is ast.AsyncWith:
            for item in node.items:
                value = self.ev(item.context_expr, fr, ctx)
                if item.optional_vars is not None:
                    self.bind(item.optional_vars, value if value.k in (T, OBJ) else UNKNOWN, fr, ctx, None)
            return self.block(node.body, fr, ctx)
        if t is ast.Raise:
            return "raise", ctx
        if t is ast.FunctionDef or t is ast.AsyncFunctionDef:
            if self.facts.is_kernel_def(node):
                fr.env[node.name] = V(KERNEL, ref=node.name)
            else:
                fr.env[node.name] = V(FUNC, ref=(node, fr.cls, None, fr))
            return False, ctx
        if t is ast.Import or t is ast.ImportFrom:
            self.local_import(node, fr)
            return False, ctx
        if t is ast.Match:
            for case in node.cases:
                self.block(case.body, fr, ctx)
            return False, ctx
        if t is ast.Break or t is ast.Continue:
            return "break", ctx
        return False, ctx

    def local_import(self, node: ast.Import | ast.ImportFrom, fr: Frame) -> None:
        if type(node) is ast.Import:
            for alias in node.names:
                if alias.asname:
                    fr.env[alias.asname] = V(MOD, ref=alias.name)
                else:
                    top = alias.name.split(".")[0]
                    fr.env[top] = V(MOD, ref=top)
        elif node.module and node.level == 0:
            for alias in node.names:
                fr.env[alias.asname or alias.name] = V(MOD, ref=f"{node.module}.{alias.name}")

    def if_stmt(self, node: ast.If, fr: Frame, ctx: tuple) -> tuple[bool, tuple]:
        value, kind = self.cond(node.test, fr, ctx)
        if value is None:
            obj = fr.self_v if fr.init and fr.self_v is not None and fr.self_v.attrs is not None else None
            before = dict(obj.attrs) if obj is not None else None  # type: ignore[union-attr]
            saved = fr.env
            narrowed = self.narrowing(node.test, fr)
            fr.env = dict(saved)
            if narrowed is not None:
                fr.env[narrowed[0]] = narrowed[1]
            launches, mark = self.launches, len(self.events)
            t1, c1 = self.block(node.body, fr, ctx)
            launched1, mark2 = self.launches > launches, len(self.events)
            env1 = fr.env
            if obj is not None:
                after_body, obj.attrs = obj.attrs, dict(before)  # type: ignore[arg-type]
            fr.env = dict(saved)
            if narrowed is not None:
                fr.env[narrowed[0]] = narrowed[2]
            launches = self.launches
            t2, c2 = self.block(node.orelse, fr, ctx)
            launched2 = self.launches > launches
            env2 = fr.env
            if obj is not None:
                self.merge_attrs(obj, after_body)
            # One side launches a kernel, the other computes with PyTorch: the PyTorch side is a
            # fallback for inputs the kernel does not take (shapes, strides, dtypes).
            alt = ("fallback", node.lineno)
            if not ctx and launched1 != launched2:
                start, end = (mark2, len(self.events)) if launched1 else (mark, mark2)
                self.retag(start, end, alt)
            if t1 and t2:
                return (t1 if t1 == t2 else "return"), ctx
            # Names bound on both sides: what follows may see either (one side returned: the other).
            fr.env = env2 if t1 else env1 if t2 else self.merge_env(env1, env2)
            after = c2 if t1 else c1 if t2 else next(
                (c for c in (c1, c2) if c and c[0] == "fallback"), ctx)  # a fallback below stays one
            if not ctx and (t1 == "return" and launched1 or t2 == "return" and launched2):
                after = alt  # what follows runs only when the kernel's branch did not return
            elif not ctx and (t1 == "return" and not launched1 or t2 == "return" and not launched2):
                # A side returns without a kernel (`if x.is_sparse: return torch.addmm(...)`): if
                # what follows launches one, that side is the fallback (decided when the call ends).
                start, end = (mark, mark2) if t1 else (mark2, len(self.events))
                fr.pending.append((start, end, alt, self.launches))
            return False, after
        taken, other = (node.body, node.orelse) if value else (node.orelse, node.body)
        off = ctx if ctx else (kind or "flag", node.lineno)
        saved = fr.env
        fr.env = dict(saved)
        t_taken, c_taken = self.block(taken, fr, ctx)
        taken_env = fr.env
        if t_taken == "raise":
            # The default decision raises (`if out_size is None and ratio is None: raise`): the
            # calls that passed took the other branch, which is then the default path.
            fr.env = saved
            return self.block(other, fr, ctx)
        fr.env = dict(saved)  # the off-default branch binds its own names
        obj = fr.self_v if fr.self_v is not None and fr.self_v.k == OBJ and fr.self_v.attrs is not None else None
        kept = dict(obj.attrs) if obj is not None else None  # type: ignore[union-attr]
        t_other, c_other = self.block(other, fr, off)
        if obj is not None and not t_taken:
            obj.attrs = kept  # what the off-default branch sets on the module does not happen
        if t_taken:
            return t_other, c_other  # what follows runs only when the off-default branch was taken
        fr.env = taken_env
        return False, c_taken

    def retag(self, start: int, end: int, ctx: tuple) -> None:
        """Move the default-path compute events in ``events[start:end]`` to ``ctx``."""
        events = self.events
        for i in range(start, end):
            event = events[i]
            if event[1] == DEFAULT and event[0] in ("compute", "library"):
                events[i] = (event[0], ctx, *event[2:])

    def narrowing(self, test: ast.expr, fr: Frame) -> tuple[str, V, V] | None:
        """``isinstance(x, torch.Tensor)`` / ``torch.is_tensor(x)``: ``(name, value in the body,
        value in the else branch)``; x is a tensor on one side and a Python value on the other."""
        negated = False
        if type(test) is ast.UnaryOp and type(test.op) is ast.Not:
            test, negated = test.operand, True
        if type(test) is not ast.Call or not test.args or type(test.args[0]) is not ast.Name:
            return None
        name = self.facts.dotted(test.func) or ""
        if name == "isinstance" and len(test.args) == 2:
            kinds = {n.attr if type(n) is ast.Attribute else n.id for n in ast.walk(test.args[1])
                     if type(n) in (ast.Attribute, ast.Name)}
            if not kinds & {"Tensor", "Parameter"}:
                return None
        elif not self.facts.resolve(name).endswith("is_tensor"):
            return None
        var = test.args[0].id
        current = self.lookup(var, fr)
        tensor = current if current.k == T else self.input_tensor(var, test.lineno)
        other = SCALAR if current.k != C else current
        return (var, other, tensor) if negated else (var, tensor, other)

    _RICH = (T, OBJ, LAYER, KERNEL, LAUNCHER, FUNC, CLASS, LIST, DICT, MOD, LAMBDA, REF)

    def merge_env(self, a: dict[str, V], b: dict[str, V]) -> dict[str, V]:
        """After an undecided branch: a name either side bound may hold either value. Keep the
        more telling one (a tensor over a setting, a kernel over nothing); two different
        settings become an unknown setting."""
        merged = dict(a)
        for name, vb in b.items():
            va = merged.get(name)
            if va is None or va is vb:
                merged[name] = vb
                continue
            if va.k in self._RICH and vb.k not in self._RICH:
                continue
            if vb.k in self._RICH and va.k not in self._RICH:
                merged[name] = vb
                continue
            if va.k == C and vb.k == C and va.const == vb.const:
                continue
            if va.k in self._RICH:  # both rich: the first seen (they are usually alike)
                continue
            merged[name] = SCALAR
        return merged

    @staticmethod
    def merge_attrs(obj: V, other: dict) -> None:
        """After an undecided branch in set-up code: an attribute set to None on one side and to
        a value on the other keeps the value and may be None."""
        attrs = obj.attrs
        assert attrs is not None and obj.maybe_none is not None
        for name in set(attrs) | set(other):
            a, b = attrs.get(name), other.get(name)
            if a is None or a.k == NONE:
                if b is not None and b.k != NONE:
                    attrs[name] = b
                    obj.maybe_none.add(name)
            elif b is None or b.k == NONE:
                obj.maybe_none.add(name)

    def try_stmt(self, node: ast.Try, fr: Frame, ctx: tuple) -> tuple[bool, tuple]:
        before = self.launches
        done, after = self.block(node.body, fr, ctx)
        launched = self.launches > before
        for handler in node.handlers:
            if self.only_raises(handler.body):
                continue
            caught = self.facts.dotted(handler.type) if handler.type is not None else None
            if caught in EXCEPTIONS_FOR_IMPORTS:
                continue
            hctx = ctx if ctx else ("except", handler.lineno)
            mark = len(self.events)
            saved = fr.env
            fr.env = dict(saved)
            self.block(handler.body, fr, hctx)
            fr.env = saved
            ops = [e for e in self.events[mark:] if e[0] in ("compute", "library") and e[1] == hctx]
            if launched and ops:
                self.event("try_fallback", ctx, handler.lineno, node.lineno, ops)
        if not done:
            done, after = self.block(node.orelse, fr, after)
        self.block(node.finalbody, fr, after)
        return done, after

    @staticmethod
    def only_raises(body: list[ast.stmt]) -> bool:
        for stmt in body:
            t = type(stmt)
            if t is ast.Raise:
                return True
            if t is ast.Pass or t is ast.Expr and type(stmt.value) is ast.Constant:
                continue
            if t is ast.Expr and type(stmt.value) is ast.Call:  # logging before raising
                name = ast.unparse(stmt.value.func) if type(stmt.value.func) in (ast.Name, ast.Attribute) else ""
                if name in ("print", "warnings.warn", "logging.warning", "logger.warning", "logging.error"):
                    continue
            return False
        return False

    def bind(self, target: ast.expr, value: V, fr: Frame, ctx: tuple, source: ast.expr | None) -> None:
        t = type(target)
        if t is ast.Name:
            fr.env[target.id] = value
        elif t is ast.Tuple or t is ast.List:
            elts = target.elts
            if value.k == LIST and value.items is not None and len(value.items) == len(elts) \
                    and not any(type(e) is ast.Starred for e in elts):
                for elt, item in zip(elts, value.items):
                    self.bind(elt, item, fr, ctx, None)
            else:
                item = self.element(value, source)
                for elt in elts:
                    if type(elt) is ast.Starred:
                        self.bind(elt.value, V(LIST, items=[item]), fr, ctx, None)
                    else:
                        self.bind(elt, item, fr, ctx, None)
        elif t is ast.Attribute:
            owner = self.ev(target.value, fr, ctx)
            if owner.k == OBJ and owner.attrs is not None:
                if not fr.init and value.k == T and not self.from_params([value]):
                    # a tensor kept on the module across calls (parameters folded in forward stay parameters)
                    value = V(T, src="state", allocs=value.allocs, small=value.small)
                elif value.k == DICT:
                    value.src = "persistent"  # an attribute outlives the call
                owner.attrs[target.attr] = value
        elif t is ast.Subscript:
            container = self.ev(target.value, fr, ctx)
            self.ev(target.slice, fr, ctx)
            if container.k == T:
                self.write(container)
            elif container.k == DICT and container.items is not None:
                container.items.append(value)
            elif container.k == LIST and container.items is not None:
                container.items.append(value)
        elif t is ast.Starred:
            self.bind(target.value, value, fr, ctx, source)

    def element(self, seq: V, source: ast.AST | None) -> V:
        """One element of an iterable value (a loop target, an unpacked tuple)."""
        k = seq.k
        if k == LIST:
            items = [i for i in (seq.items or []) if i.k != NONE]
            if not items:
                return UNKNOWN
            for kind in (T, OBJ, LAYER, KERNEL, FUNC):
                for item in items:
                    if item.k == kind:
                        return item
            return items[0]
        if k == LAYER:
            return seq
        if k == T:
            return V(T, src=seq.src, allocs=seq.allocs, small=seq.small)
        if k == DICT:
            return self.element(V(LIST, items=seq.items), source)
        if k in (S, C):
            return SCALAR
        return UNKNOWN

    def cond(self, node: ast.expr, fr: Frame, ctx: tuple, depth: int = 0) -> tuple[bool | None, str | None]:
        """``(value on the default path or None when undecided, kind)``; kind is ``device``,
        ``training`` or ``flag``."""
        if depth > 20:
            return None, None
        t = type(node)
        if t is ast.BoolOp:
            parts = [self.cond(v, fr, ctx, depth + 1) for v in node.values]
            is_and = type(node.op) is ast.And
            decisive = [p for p in parts if p[0] is (not is_and)]
            if decisive:
                kinds = [k for _, k in decisive]
                return (not is_and), ("training" if "training" in kinds else "device" if "device" in kinds else "flag")
            if all(p[0] is not None for p in parts):
                kinds = [k for _, k in parts]
                return is_and, ("training" if "training" in kinds else "device" if "device" in kinds else "flag")
            # A device test with undecided preconditions (`x.is_cuda and x.dtype == torch.float32`):
            # the harness's inputs are CUDA tensors the kernel was written for.
            if any(p == (is_and, "device") for p in parts):
                return is_and, "device"
            return None, None
        if t is ast.UnaryOp and type(node.op) is ast.Not:
            value, kind = self.cond(node.operand, fr, ctx, depth + 1)
            return (None if value is None else not value), kind
        if t is ast.Attribute:
            if node.attr == "is_cuda":
                return True, "device"
            if node.attr == "is_cpu":
                return False, "device"
            if node.attr == "training":
                owner = self.peek(node.value, fr)
                if owner.k == OBJ and owner.attrs is not None:
                    flag = owner.attrs.get("training")
                    if flag is not None and flag.k == C:
                        return bool(flag.const), "training"
                return True, "training"
        if t is ast.Call:
            name = self.facts.dotted(node.func) or ""
            resolved = self.facts.resolve(name)
            if resolved.endswith("cuda.is_available") or resolved.endswith("is_cuda_available"):
                return True, "device"
            return None, None
        if t is ast.Compare and len(node.ops) == 1:
            return self.compare(node, fr, ctx, depth)
        value = self.peek(node, fr)
        if value.k == C:
            return bool(value.const), (value.src if value.src in ("device", "training") else "flag")
        if value.k == NONE:
            return False, "flag"
        if value.k in (LAYER, OBJ, KERNEL, FUNC, CLASS, MOD, LAUNCHER) or value.k == T and not value.maybe_none:
            return (True, "flag") if value.k != T else (None, None)
        return None, None

    def compare(self, node: ast.Compare, fr: Frame, ctx: tuple, depth: int) -> tuple[bool | None, str | None]:
        op = type(node.ops[0])
        left, right = node.left, node.comparators[0]
        if op in (ast.Is, ast.IsNot):
            for a, b in ((left, right), (right, left)):
                if type(b) is ast.Constant and b.value is None:
                    value = self.peek(a, fr)
                    known = self.is_none(a, value, fr)
                    if known is None:
                        return None, None
                    return (known if op is ast.Is else not known), "flag"
            return None, None
        device = self.device_side(left, fr) or self.device_side(right, fr)
        if device and op in (ast.Eq, ast.NotEq):
            other = right if self.device_side(left, fr) else left
            text = other.value if type(other) is ast.Constant and isinstance(other.value, str) else None
            if text is None and type(other) is ast.Call:  # torch.device("cuda")
                args = other.args
                text = args[0].value if args and type(args[0]) is ast.Constant and isinstance(args[0].value, str) else None
            if text is not None:
                is_cuda = text.startswith("cuda")
                return (is_cuda if op is ast.Eq else not is_cuda), "device"
            return None, None
        if op in (ast.In, ast.NotIn) and self.device_side(left, fr):
            return None, None
        a, b = self.peek(left, fr), self.peek(right, fr)
        if a.k == C and b.k == C:
            try:
                result = {ast.Eq: lambda x, y: x == y, ast.NotEq: lambda x, y: x != y,
                          ast.Lt: lambda x, y: x < y, ast.LtE: lambda x, y: x <= y,
                          ast.Gt: lambda x, y: x > y, ast.GtE: lambda x, y: x >= y,
                          ast.In: lambda x, y: x in y, ast.NotIn: lambda x, y: x not in y}[op](a.const, b.const)
            except Exception:  # noqa: BLE001 - comparing literals of mixed types
                return None, None
            kind = "training" if "training" in (a.src, b.src) else "flag"
            return bool(result), kind
        return None, None

    def device_side(self, node: ast.expr, fr: Frame) -> bool:
        """``x.device``, ``x.device.type``, ``str(x.device)``: the side of a device test."""
        if type(node) is ast.Call and type(node.func) is ast.Name and node.func.id == "str" and node.args:
            node = node.args[0]
        if type(node) is ast.Attribute:
            if node.attr == "type" and type(node.value) is ast.Attribute and node.value.attr == "device":
                return True
            if node.attr == "device":
                return True
        return False

    def is_none(self, node: ast.expr, value: V, fr: Frame) -> bool | None:
        if type(node) is ast.Attribute:
            owner = self.peek(node.value, fr)
            if owner.k == OBJ and owner.maybe_none and node.attr in owner.maybe_none:
                return None
        if value.maybe_none and "self" in value.maybe_none:
            return None
        if value.k == NONE:
            return True
        if value.k in (T, LAYER, OBJ, KERNEL, FUNC, C, LIST, DICT, MOD, LAUNCHER):
            return False
        return None

    def peek(self, node: ast.expr, fr: Frame) -> V:
        """The value of a name or attribute chain, without recording anything."""
        t = type(node)
        if t is ast.Name:
            return self.lookup(node.id, fr)
        if t is ast.Attribute:
            owner = self.peek(node.value, fr)
            if owner.k == OBJ and owner.attrs is not None:
                found = owner.attrs.get(node.attr)
                if found is not None:
                    return found
                info = owner.ref
                if node.attr in info.kernels:
                    return V(KERNEL, ref=node.attr)
                return UNKNOWN
            if owner.k == MOD:
                return V(MOD, ref=f"{owner.ref}.{node.attr}")
            return UNKNOWN
        if t is ast.Constant:
            return NONE_VALUE if node.value is None else V(C, const=node.value)
        return UNKNOWN
