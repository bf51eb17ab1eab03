"""The kernel screen's calls: launches, the module's own functions and objects, torch.

Part of :mod:`kernelbook_lib.screen_walk` (a mixin of its ``Walker``). A call is a kernel launch
(``kernel[grid](...)``, a launcher, ``kernel.run``), a call into the module's own code (followed:
functions, methods, ``nn.Module`` objects, ``autograd.Function.apply``), an ``nn`` layer (compute),
a torch function or tensor method (glue or compute, named as an operation), a library call
(``extern_kernels``, ``triton.ops``, Inductor, aten) or a Python builtin.
"""

from __future__ import annotations

import ast
from typing import Any

from kernelbook_lib.screen_facts import (
    ALLOC_CALLS, ALLOC_METHODS, CASTS, ClassInfo, COMPUTE, FILL_METHODS, layer_op, LAYOUT,
    LOW_DTYPES, NN_CONTAINERS, NN_HOLDERS, NN_NOOP, PLUMBING_NAMESPACES, SCALAR_METHODS,
    TORCH_PLUMBING,
)
from kernelbook_lib.screen_values import (
    C, CLASS, DATA, DECO, DEFAULT, DICT, Frame, FUNC, INDUCTOR_GLUE, INIT_NAMES, joint_src, KERNEL,
    LAMBDA, LAUNCHER, LAYER, LIST, MAX_CALL_DEPTH, MOD, NONE, NONE_VALUE, OBJ, PARAM, REF, S, SCALAR,
    SUPER, T, tensor_value, UNK, UNKNOWN, UNMISTAKABLE, V,
)


class CallsMixin:
    """Calls of :class:`kernelbook_lib.screen_walk.Walker`."""

    def args_of(self, node: ast.Call, fr: Frame, ctx: tuple) -> tuple[list[V], dict[str, V]]:
        args: list[V] = []
        for a in node.args:
            if type(a) is ast.Starred:
                value = self.ev(a.value, fr, ctx)
                if value.k == LIST and value.items is not None:
                    args.extend(value.items)
                else:
                    args.append(value)
            else:
                args.append(self.ev(a, fr, ctx))
        kwargs = {kw.arg: self.ev(kw.value, fr, ctx) for kw in node.keywords if kw.arg is not None}
        for n, kw in enumerate(node.keywords):
            if kw.arg is None:  # **mapping: its values are passed too
                value = self.ev(kw.value, fr, ctx)
                for m, item in enumerate(value.items or [value]):
                    kwargs[f"**{n}.{m}"] = item
        return args, kwargs

    def call(self, node: ast.Call, fr: Frame, ctx: tuple) -> V:
        func = node.func
        tf = type(func)
        if tf is ast.Subscript:
            base = self.ev(func.value, fr, ctx)
            self.ev(func.slice, fr, ctx)
            args, kwargs = self.args_of(node, fr, ctx)
            if base.k == KERNEL:
                return self.launch(base.ref, node, args, kwargs, fr, ctx)
            if base.k in (LIST, DICT, LAYER):
                return self.call_value(self.element(base, None) if base.k != LAYER else base, node, args,
                                       kwargs, fr, ctx, self.text(func))
            if base.k == UNK and self.facts.kernels:
                return self.launch(self.text(func.value), node, args, kwargs, fr, ctx)
            self.write(*args, *kwargs.values())
            return UNKNOWN
        if tf is ast.Attribute:
            recv = self.ev(func.value, fr, ctx)
            return self.method(recv, func.attr, node, fr, ctx)
        value = self.lookup(func.id, fr) if tf is ast.Name else self.ev(func, fr, ctx)
        if tf is ast.Name and value.k == UNK:
            return self.builtin(func.id, node, fr, ctx)
        args, kwargs = self.args_of(node, fr, ctx)
        return self.call_value(value, node, args, kwargs, fr, ctx, self.text(func))

    def builtin(self, name: str, node: ast.Call, fr: Frame, ctx: tuple) -> V:
        if name == "super":
            return V(SUPER, ref=(fr.cls, fr.self_v))
        args, kwargs = self.args_of(node, fr, ctx)
        if name == "id" or name == "hash":
            return V(S, src="key")
        if name in ("len", "int", "float", "bool", "str", "range", "round", "isinstance", "hasattr", "callable",
                    "type", "print", "repr", "format", "divmod", "abs", "any", "all", "issubclass", "ord", "chr"):
            if name == "abs" and args and args[0].k == T:
                return self.torch_call("torch.abs", "abs", node, args, kwargs, fr, ctx)
            if name in ("int", "float", "bool", "round", "abs"):  # `float(t)`: a value read from t
                return self.scalar(args)
            return SCALAR
        if name in ("min", "max"):
            if any(a.k == T for a in args):
                return self.torch_call(f"torch.{name}imum", f"{name}imum", node, args, kwargs, fr, ctx)
            return self.scalar(args)
        if name == "sum":
            if args and args[0].k == LIST and any(i.k == T and not i.small for i in (args[0].items or [])):
                if self.from_params(args):  # `sum([self.w1, self.w2])`: folding parameters
                    return self.param_result("add", node.lineno)
                self.compute("add", ctx, node.lineno, fr, "calls sum over tensors")
                return tensor_value()
            return SCALAR if not args or args[0].k != T else V(T, small=args[0].small, src="computed")
        if name in ("tuple", "list", "sorted", "reversed", "set", "frozenset"):
            if args and args[0].k == T:
                return V(LIST, items=[V(T, src=args[0].src, allocs=args[0].allocs, small=args[0].small)])
            return args[0] if args and args[0].k == LIST else V(LIST, items=[])
        if name in ("zip", "enumerate", "map", "filter"):
            items = [self.element(a, None) for a in args]
            return V(LIST, items=[V(LIST, items=([SCALAR] if name == "enumerate" else []) + items)])
        if name == "dict":
            return V(DICT, items=list(kwargs.values()))
        if name == "getattr" and len(args) >= 2 and type(node.args[1]) is ast.Constant:
            owner = args[0]
            if owner.k == OBJ and owner.attrs is not None:
                found = owner.attrs.get(node.args[1].value)
                if found is not None:
                    return found
            return args[2] if len(args) > 2 else UNKNOWN
        if name == "setattr" and len(args) >= 3 and type(node.args[1]) is ast.Constant:
            owner = args[0]
            if owner.k == OBJ and owner.attrs is not None and isinstance(node.args[1].value, str):
                owner.attrs[node.args[1].value] = args[2]
            return NONE_VALUE
        self.write(*args, *kwargs.values())
        return UNKNOWN

    def call_value(self, value: V, node: ast.Call, args: list[V], kwargs: dict[str, V], fr: Frame,
                   ctx: tuple, callee: str) -> V:
        k = value.k
        if k == LAUNCHER:
            return self.launch(value.ref, node, args, kwargs, fr, ctx)
        if k == FUNC:
            fn, owner, bound, closure = value.ref
            return self.call_function(fn, owner, bound, args, kwargs, ctx, node.lineno, closure=closure,
                                      init=fr.init)
        if k == LAMBDA:
            lam, closure = value.ref
            sub = Frame(fr.name, fr.cls, fr.self_v, closure=closure if isinstance(closure, Frame) else None,
                        init=fr.init)
            for param, arg in zip(lam.args.args, args):
                sub.env[param.arg] = arg
            return self.ev(lam.body, sub, ctx)
        if k == CLASS:
            info: ClassInfo = value.ref
            return self.instantiate(info, args, node.lineno, kwargs)
        if k == REF:
            self.event("bypass", ctx, node.lineno, f"{fr.name} builds the reference {value.ref}")
            return V(REF, ref=value.ref, src="instance")
        if k == OBJ:
            return self.method(value, "forward", node, fr, ctx, pre=(args, kwargs))
        if k == LAYER:
            return self.layer_call(value, node, args, fr, ctx, callee)
        if k == MOD:
            dotted = value.ref
            return self.namespace_call(dotted, dotted.rsplit(".", 1)[-1], node, args, kwargs, fr, ctx)
        if k == DECO:
            if args and args[0].k == FUNC:
                return V(KERNEL, ref=args[0].ref[0].name)
            return value
        if k == KERNEL:
            return UNKNOWN  # a kernel called without a grid is not a launch
        self.write(*args, *kwargs.values())
        return UNKNOWN

    def call_function(self, fn: ast.FunctionDef, owner: ClassInfo | None, bound: V | None, args: list[V],
                      kwargs: dict[str, V], ctx: tuple, line: int, closure: Frame | None = None,
                      init: bool = False) -> V:
        if self.facts.is_kernel_def(fn):
            return UNKNOWN
        init = init or fn.name in INIT_NAMES
        key = (id(fn), ctx, init, id(bound) if bound is not None else 0,
               tuple((a.k, id(a.ref) if a.k not in (C,) else a.const, a.allocs, a.small) for a in args),
               tuple(sorted((n, a.k, a.allocs) for n, a in kwargs.items())))
        try:
            hash(key)
        except TypeError:
            key = None  # type: ignore[assignment]
        if key is not None and key in self.memo:
            return self.memo[key]
        if id(fn) in self.stack or len(self.stack) >= MAX_CALL_DEPTH:
            if len(self.stack) >= MAX_CALL_DEPTH:
                self.exhausted = True
            self.write(*args, *kwargs.values())
            return UNKNOWN
        frame = Frame(fn.name, owner, bound, closure=closure, init=init)
        a = fn.args
        params = [*a.posonlyargs, *a.args]
        is_static = any(self.facts.dotted(d) == "staticmethod" for d in fn.decorator_list)
        positional = list(args)
        if bound is not None and not is_static:
            positional = [bound, *positional]
        elif owner is not None and owner.is_function and not is_static and params and params[0].arg in ("ctx", "self"):
            positional = [UNKNOWN, *positional]
        defaults = [None] * (len(params) - len(a.defaults)) + list(a.defaults)
        for i, param in enumerate(params):
            if i < len(positional):
                frame.env[param.arg] = positional[i]
            elif param.arg in kwargs:
                frame.env[param.arg] = kwargs[param.arg]
            else:
                frame.env[param.arg] = self.literal(defaults[i]) if defaults[i] is not None else UNKNOWN
        for param, default in zip(a.kwonlyargs, a.kw_defaults):
            frame.env[param.arg] = kwargs.get(param.arg) or (self.literal(default) if default is not None else UNKNOWN)
        if a.vararg is not None:
            frame.env[a.vararg.arg] = V(LIST, items=positional[len(params):])
        if a.kwarg is not None:
            frame.env[a.kwarg.arg] = V(DICT, items=[v for n, v in kwargs.items()
                                                    if n not in {p.arg for p in params}])
        self.stack.append(id(fn))
        try:
            self.block(fn.body, frame, ctx)
        finally:
            self.stack.pop()
        self.settle(frame)
        result = self.result_of(frame, ctx)
        if result.k == T and not init and any(
                (self.facts.dotted(d.func if type(d) is ast.Call else d) or "").rsplit(".", 1)[-1]
                in ("lru_cache", "cache") for d in fn.decorator_list):
            self.event("cache", ctx, fn.lineno, f"{fn.name} is memoised with functools (its outputs are reused)")
        if key is not None:
            self.memo[key] = result
        return result

    @staticmethod
    def result_of(frame: Frame, ctx: tuple) -> V:
        same = [v for c, v, _ in frame.returns if c == ctx]
        if same:
            for v in reversed(same):
                if v.k != NONE:
                    return v
            return same[-1]
        if frame.returns:
            return frame.returns[-1][1]
        return NONE_VALUE

    def launch(self, kernel: str, node: ast.Call, args: list[V], kwargs: dict[str, V], fr: Frame,
               ctx: tuple) -> V:
        if fr.init:
            return NONE_VALUE
        self.launches += 1
        body = self.facts.kernel_body(kernel)
        targets = self.kernel_outputs(body, args, kwargs)
        if body.writes == "data":
            self.write(*targets)
        else:  # a kernel that stores constants (or nothing) does not compute its outputs
            for v in targets:
                for ident in v.allocs:
                    self.const_filled.setdefault(ident, (kernel, body.writes))
        self.event("launch", ctx, node.lineno, kernel, fr.name)
        seen = (kernel, ctx == DEFAULT)
        if kernel in self.facts.kernels and seen not in self.kernels_seen:
            self.kernels_seen.add(seen)
            for dtype, line in body.casts:
                self.event("precision", ctx, line, dtype, f"kernel {kernel} casts to {dtype}")
        return NONE_VALUE

    @staticmethod
    def kernel_outputs(body: Any, args: list[V], kwargs: dict[str, V]) -> list[V]:
        """The launch arguments bound to the parameters the kernel stores through (all of them
        when that is not known)."""
        if body.stored is None or not body.params:
            return [*args, *kwargs.values()]
        found = [arg for name, arg in zip(body.params, args) if name in body.stored]
        found += [arg for name, arg in kwargs.items() if name in body.stored or name.startswith("**")]
        if len(args) > len(body.params):
            found += args[len(body.params):]
        return found

    def layer_call(self, layer: V, node: ast.Call, args: list[V], fr: Frame, ctx: tuple, callee: str) -> V:
        ops = layer.ref or ()
        for op, display in ops:
            self.compute(op, ctx, node.lineno, fr, f"calls {callee} ({display})")
        result: V = args[0] if args and not ops else tensor_value()
        for item in layer.items or []:
            if item.k == OBJ:
                result = self.method(item, "forward", node, fr, ctx, pre=([result], {}))
        return result if result.k == T or not ops else tensor_value()

    def method(self, recv: V, attr: str, node: ast.Call, fr: Frame, ctx: tuple,
               pre: tuple[list[V], dict[str, V]] | None = None) -> V:
        k = recv.k
        if k == MOD:
            args, kwargs = pre or self.args_of(node, fr, ctx)
            return self.namespace_call(f"{recv.ref}.{attr}", attr, node, args, kwargs, fr, ctx)
        args, kwargs = pre or self.args_of(node, fr, ctx)
        if k == T:
            return self.tensor_method(recv, attr, node, args, kwargs, fr, ctx)
        if k == OBJ:
            info: ClassInfo = recv.ref
            if recv.attrs is not None and attr in recv.attrs and attr not in ("forward",):
                return self.call_value(recv.attrs[attr], node, args, kwargs, fr, ctx, f"self.{attr}")
            found = self.find_method(info, attr if attr != "__call__" else "forward")
            if found is None and attr == "__call__":
                found = self.find_method(info, "__call__")
            if found is not None:
                owner, fn = found
                if owner.kernels and attr in owner.kernels:
                    return UNKNOWN
                return self.call_function(fn, owner, recv, args, kwargs, ctx, node.lineno, init=fr.init)
            if attr in ("forward", "__call__"):
                base = self.layer_base(info)
                if base is not None:
                    self.compute(base[0], ctx, node.lineno, fr, f"calls {self.text(node.func)} ({base[1]})")
                    return tensor_value()
                ref = self.ref_base(info)
                if ref is not None:
                    self.event("bypass", ctx, node.lineno, f"{fr.name} runs the reference {ref}'s forward")
                    return tensor_value()
            if attr in ("register_buffer", "register_parameter", "add_module", "register_module") \
                    and len(node.args) >= 2 and type(node.args[0]) is ast.Constant and recv.attrs is not None:
                name = node.args[0].value
                if isinstance(name, str):
                    value = args[1]
                    recv.attrs[name] = value if value.k != T else V(
                        T, src=PARAM, allocs=self.new_buffer("param", node.lineno, name))
                return NONE_VALUE
            if attr in ("eval",) and recv.attrs is not None:
                recv.attrs["training"] = V(C, const=False, src="training")
                return recv
            if attr == "train" and recv.attrs is not None:
                mode = args[0] if args else V(C, const=True)
                recv.attrs["training"] = V(C, const=bool(mode.const), src="training") if mode.k == C else SCALAR
                return recv
            if attr in ("to", "cuda", "cpu", "half", "float", "double", "bfloat16", "requires_grad_"):
                if attr in ("half", "bfloat16"):
                    self.precision(LOW_DTYPES[attr], ctx, node.lineno, fr, f"casts the module with .{attr}()")
                return recv
            return UNKNOWN
        if k == CLASS:
            info = recv.ref
            if attr == "apply" and info.is_function:
                found = self.find_method(info, "forward")
                if found is not None:
                    owner, fn = found
                    return self.call_function(fn, owner, None, args, kwargs, ctx, node.lineno)
                return UNKNOWN
            found = self.find_method(info, attr)
            if found is not None:
                owner, fn = found
                return self.call_function(fn, owner, None, args, kwargs, ctx, node.lineno)
            return UNKNOWN
        if k == SUPER:
            info, self_v = recv.ref if isinstance(recv.ref, tuple) else (None, None)
            if info is None:
                return UNKNOWN
            bases = [self.facts.classes[b] for b in info.bases if b in self.facts.classes and b != info.name]
            for base in bases:
                found = self.find_method(base, attr)
                if found is not None:
                    owner, fn = found
                    return self.call_function(fn, owner, self_v, args, kwargs, ctx, node.lineno, init=fr.init)
            if attr == "__init__":
                return NONE_VALUE
            ref = self.ref_base(info)
            if ref is not None:
                self.event("bypass", ctx, node.lineno, f"{fr.name} calls super().{attr} of the reference {ref}")
                return tensor_value()
            base_layer = self.layer_base(info)
            if base_layer is not None and attr in ("forward", "__call__", "_conv_forward"):
                self.compute(base_layer[0], ctx, node.lineno, fr, f"calls super().{attr} ({base_layer[1]})")
                return tensor_value()
            return UNKNOWN
        if k == KERNEL:
            if attr == "run":
                return self.launch(recv.ref, node, args, kwargs, fr, ctx)
            return UNKNOWN
        if k == LAYER:
            if attr in ("forward", "__call__", "_conv_forward"):
                return self.layer_call(recv, node, args, fr, ctx, self.text(node.func))
            if attr in ("half", "bfloat16"):
                self.precision(LOW_DTYPES[attr], ctx, node.lineno, fr, f"casts a layer with .{attr}()")
            return recv if attr in ("to", "cuda", "eval", "train", "float", "half") else UNKNOWN
        if k == LIST:
            if attr in ("append", "extend", "insert") and recv.items is not None:
                recv.items.extend(args[-1:] if attr != "extend" else (args[0].items or [args[0]]) if args else [])
                return NONE_VALUE
            if attr == "pop":
                return self.element(recv, None)
            return SCALAR if attr in ("index", "count") else UNKNOWN
        if k == DICT:
            if attr in ("get", "setdefault", "pop"):
                item = self.element(recv, None)
                if recv.src == "persistent" and item.k in (T, UNK):
                    return V(T, src="cached")
                if attr == "setdefault" and len(args) >= 2 and recv.items is not None:
                    recv.items.append(args[1])
                return item if item.k != UNK or len(args) < 2 else args[1]
            if attr in ("items", "values", "keys"):
                item = self.element(recv, None)
                return V(LIST, items=[V(LIST, items=[SCALAR, item])] if attr == "items" else [item])
            if attr == "update" and recv.items is not None:
                for a in args:
                    recv.items.extend(a.items or [])
            return UNKNOWN
        if k == REF:
            self.event("bypass", ctx, node.lineno, f"{fr.name} calls the reference {recv.ref}")
            return tensor_value()
        if k in (S, C, NONE):
            return SCALAR
        # Unknown receiver: the unmistakable tensor operations still count.
        if attr in UNMISTAKABLE:
            self.compute(attr, ctx, node.lineno, fr, f"calls {self.text(node.func)}")
            return tensor_value()
        if attr in SCALAR_METHODS:
            return V(S, allocs=recv.allocs)
        self.write(*args, *kwargs.values())
        return UNKNOWN

    def tensor_method(self, recv: V, attr: str, node: ast.Call, args: list[V], kwargs: dict[str, V],
                      fr: Frame, ctx: tuple) -> V:
        line = node.lineno
        if attr in SCALAR_METHODS:
            src = {"data_ptr": "key", "numel": "numel", "nelement": "numel"}.get(attr, "")
            if attr == "size" and not node.args:
                src = "shape"
            if attr in ("item", "tolist", "numpy"):  # values read from the tensor's data
                src = self.scalar([recv]).src
            return V(S, allocs=recv.allocs, src=src)
        same = V(T, src=recv.src, allocs=recv.allocs, small=recv.small)
        if attr in ("split", "chunk", "unbind", "tensor_split", "split_with_sizes"):
            return V(LIST, items=[same])
        if attr in LAYOUT:
            return same
        if attr in CASTS:
            dtype = ""
            if attr in ("half", "bfloat16"):
                dtype = LOW_DTYPES[attr]
            elif attr in ("to", "type"):
                for arg in [*node.args, *(kw.value for kw in node.keywords if kw.arg == "dtype")]:
                    dtype = self.low_dtype(arg) or dtype
            if dtype and not recv.small:
                self.precision(dtype, ctx, line, fr, f"casts {self.text(node.func.value)} with .{attr}(...) to {dtype}")
            return same
        if attr in ALLOC_METHODS:
            return self.allocation(attr, node, args, kwargs, fr, ctx, like=attr == "new_empty" and False)
        if attr in FILL_METHODS:
            return same
        if attr == "copy_":
            self.write(recv)
            return same
        base = attr[:-1] if attr.endswith("_") and not attr.startswith("_") else attr
        if base in COMPUTE or base in ("index_put", "masked_scatter", "scatter", "index_add", "index_copy"):
            glue = self.glue([recv, *(a for a in args if a.k == T)], base, [recv, *args, *kwargs.values()], line)
            if glue is not None:
                return glue
            self.compute(base, ctx, line, fr, f"calls {self.text(node.func)}")
            if base != attr:
                self.write(recv)
            return tensor_value()
        return tensor_value("computed") if attr not in ("backward", "register_hook", "retain_grad") else NONE_VALUE

    def low_dtype(self, node: ast.AST) -> str:
        if type(node) is ast.Attribute and node.attr in LOW_DTYPES:
            return LOW_DTYPES[node.attr]
        if type(node) is ast.Constant and isinstance(node.value, str):
            return LOW_DTYPES.get(node.value.replace("torch.", ""), "")
        return ""

    def allocation(self, name: str, node: ast.Call, args: list[V], kwargs: dict[str, V], fr: Frame,
                   ctx: tuple, like: bool = False) -> V:
        """A fresh buffer; one-dimensional buffers with an explicit size hold partial results."""
        line = node.lineno
        dtype_node = next((kw.value for kw in node.keywords if kw.arg == "dtype"), None)
        if dtype_node is not None:
            low = self.low_dtype(dtype_node)
            if low:
                self.precision(low, ctx, line, fr, f"allocates a {low} buffer with {name}")
        data = [a for a in (*args, *kwargs.values()) if a.k == S and a.src in (PARAM, DATA)]
        if data:  # `torch.tensor(total.item())`, `torch.full(shape, v)`: values read from tensors
            if self.from_params(data):
                return self.param_result(name, line)
            return tensor_value("computed", small=name in ("tensor", "as_tensor", "scalar_tensor"))
        small = False
        if not name.endswith("_like") and name not in ("tensor", "as_tensor", "from_numpy", "scalar_tensor"):
            shape = [a for a in node.args if type(a) is not ast.Starred]
            explicit = len(node.args) == 1 and not any(type(a) is ast.Starred for a in node.args)
            if explicit and name in ("full", "new_full"):
                explicit = False
            if name in ("full", "new_full") and len(node.args) == 2:
                shape, explicit = node.args[:1], True
            if explicit and shape:
                first = shape[0]
                if type(first) in (ast.Tuple, ast.List):
                    small = len(first.elts) == 1
                elif type(first) is ast.Attribute and first.attr == "shape" or type(first) is ast.Call and \
                        type(first.func) is ast.Attribute and first.func.attr == "size" and not first.args:
                    small = False
                else:
                    small = True
        if name in ("tensor", "as_tensor", "scalar_tensor"):
            small = True  # a literal or a Python value moved to the device
        what = f"{name} at line {line}"
        return V(T, src="alloc", allocs=self.new_buffer("alloc", line, what), small=small)

    def namespace_call(self, dotted: str, last: str, node: ast.Call, args: list[V], kwargs: dict[str, V],
                       fr: Frame, ctx: tuple) -> V:
        resolved = self.facts.resolve(dotted)
        line = node.lineno
        callee = self.text(node.func)
        root = resolved.split(".", 1)[0]
        if "extern_kernels" in resolved:
            self.write(*args, *kwargs.values())
            if not fr.init:
                self.event("library", ctx, line, "extern_kernels", f"{fr.name} calls {callee}")
            return tensor_value()
        if resolved.startswith("triton.ops") or resolved.startswith("triton.kernels"):
            self.write(*args, *kwargs.values())
            if not fr.init:
                self.event("library", ctx, line, "triton.ops", f"{fr.name} calls {callee}")
            return tensor_value()
        if root == "triton":
            if last in ("jit",):
                if args and args[0].k == FUNC:
                    return V(KERNEL, ref=args[0].ref[0].name)
                return V(DECO)
            if last in ("autotune", "heuristics"):
                return V(DECO)
            return SCALAR
        if resolved.startswith("torch._inductor") or resolved.startswith("torch._C._dynamo") \
                or last in INDUCTOR_GLUE and root in ("torch", "torch._C"):
            if last in INDUCTOR_GLUE or last.startswith("assert") or last.startswith("empty"):
                if "empty" in last:
                    return V(T, src="alloc", allocs=self.new_buffer("alloc", line, f"{last} at line {line}"))
                if last == "reinterpret_tensor" and args and args[0].k == T:
                    return V(T, src=args[0].src, allocs=args[0].allocs, small=args[0].small)
                return SCALAR
            self.write(*args, *kwargs.values())
            if not fr.init:
                self.event("library", ctx, line, "inductor", f"{fr.name} calls {callee}")
            return tensor_value()
        if resolved.startswith("torch.ops.") or resolved.startswith("torch._C._nn") or resolved.startswith("torch._C._VariableFunctions"):
            parts = resolved.split(".")
            op = parts[3] if resolved.startswith("torch.ops.") and len(parts) > 3 else last
            if op in LAYOUT or op in CASTS or op in ALLOC_CALLS or op in SCALAR_METHODS or op.startswith("_unsafe_view"):
                if op in ALLOC_CALLS:
                    return self.allocation(op, node, args, kwargs, fr, ctx)
                return next((V(T, src=a.src, allocs=a.allocs, small=a.small) for a in args if a.k == T), tensor_value())
            self.write(*args, *kwargs.values())
            if not fr.init:
                self.event("library", ctx, line, "aten", f"{fr.name} calls {callee}")
            return tensor_value()
        if root != "torch":
            if resolved in ("functools.partial", "partial"):
                if args:
                    target = args[0]
                    if target.k == FUNC:
                        return target  # arguments bound later are not tracked: the function runs
                    return target
                return UNKNOWN
            if root in ("math", "numpy", "np", "time", "os", "random", "operator", "itertools", "warnings",
                        "logging", "sys", "typing", "dataclasses", "collections", "inspect", "threading",
                        "concurrent", "contextlib", "copy", "builtins"):
                if root == "copy" and args:
                    return args[0]
                return self.scalar(args)  # `math.sqrt(v)`: read from data when v is
            if resolved in ("einops.rearrange", "einops.repeat") or root == "einops" and last in ("rearrange", "repeat"):
                return next((V(T, src=a.src, allocs=a.allocs, small=a.small) for a in args if a.k == T), tensor_value())
            self.write(*args, *kwargs.values())
            return UNKNOWN
        return self.torch_call(resolved, last, node, args, kwargs, fr, ctx)

    def torch_call(self, resolved: str, last: str, node: ast.Call, args: list[V], kwargs: dict[str, V],
                   fr: Frame, ctx: tuple) -> V:
        line = node.lineno
        callee = self.text(node.func)
        parts = resolved.split(".")
        namespace = ".".join(parts[1:-1])
        tensors = [a for a in (*args, *kwargs.values()) if a.k == T]
        if namespace.startswith("nn") and not namespace.startswith("nn.functional"):
            if namespace.startswith("nn.init") or namespace.startswith("nn.utils"):
                return SCALAR
            if last in NN_HOLDERS:
                if not fr.init and any(a.k == T and a.src not in (PARAM, "alloc") for a in tensors):
                    # `nn.Parameter(h)` on a value computed in forward: still that value
                    return V(T, src=joint_src(tensors), allocs=frozenset().union(*(a.allocs for a in tensors)))
                return V(T, src=PARAM, allocs=self.new_buffer("param", line, f"{last} at line {line}"))
            if last in NN_CONTAINERS:
                ops: list[tuple[str, str]] = []
                items: list[V] = []
                for a in args:
                    for item in (a.items or []) if a.k in (LIST, DICT) else [a]:
                        if item.k == LAYER:
                            ops.extend(item.ref or ())
                            items.extend(item.items or [])
                        elif item.k == OBJ:
                            items.append(item)
                return V(LAYER, ref=tuple(ops), items=items)
            if last[:1].isupper():
                if last in NN_NOOP and last not in ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
                                                    "FeatureAlphaDropout"):
                    return V(LAYER, ref=())
                return V(LAYER, ref=((layer_op(last), f"nn.{last}"),))
            return SCALAR
        first = namespace.split(".", 1)[0] if namespace else ""
        if first in PLUMBING_NAMESPACES or namespace.startswith("_C._dynamo"):
            if last in ("autocast",) or namespace.endswith("amp") and last == "autocast":
                self.autocast(node, ctx, fr)
            return SCALAR
        if first == "autograd":
            return SCALAR if last != "Function" else UNKNOWN
        if last == "autocast":
            self.autocast(node, ctx, fr)
            return SCALAR
        if last in ALLOC_CALLS:
            return self.allocation(last, node, args, kwargs, fr, ctx)
        if last in LAYOUT or last in ("broadcast_to", "broadcast_tensors"):
            if not tensors:
                return tensor_value("computed")
            allocs = frozenset().union(*(a.allocs for a in tensors))
            src = joint_src(tensors)
            if last in ("split", "chunk", "unbind", "tensor_split", "broadcast_tensors", "split_with_sizes"):
                return V(LIST, items=[V(T, src=src, allocs=allocs, small=all(a.small for a in tensors))])
            return V(T, src=src, allocs=allocs, small=all(a.small for a in tensors))
        if last in TORCH_PLUMBING or last in SCALAR_METHODS:
            return SCALAR
        if last in CASTS:
            return tensors[0] if tensors else UNKNOWN
        if namespace == "nn.functional" and last == "dropout":
            training = next((kw.value for kw in node.keywords if kw.arg == "training"), None)
            if training is not None:
                value, _kind = self.cond(training, fr, ctx)
                if value is False:
                    return tensors[0] if tensors else tensor_value()
        is_compute = (last in COMPUTE or namespace in ("nn.functional", "special", "linalg", "fft")
                      or last[:1].islower() and tensors and not last.startswith("_"))
        if not is_compute:
            return SCALAR if not tensors else tensor_value()
        out = kwargs.get("out")
        if out is not None:
            self.write(out)
        glue = self.glue(tensors, last, [*args, *kwargs.values()], line)
        if glue is not None:
            return glue
        if last in ("pad", "unfold") and namespace == "nn.functional":
            return V(T, src=tensors[0].src if tensors else "computed")
        self.compute(last, ctx, line, fr, f"calls {callee}")
        return tensor_value()

    def autocast(self, node: ast.Call, ctx: tuple, fr: Frame) -> None:
        dtype = next((kw.value for kw in node.keywords if kw.arg == "dtype"), None)
        low = self.low_dtype(dtype) if dtype is not None else "fp16"
        enabled = next((kw.value for kw in node.keywords if kw.arg == "enabled"), None)
        if enabled is not None and type(enabled) is ast.Constant and enabled.value is False:
            return
        if low:
            self.precision(low, ctx, node.lineno, fr, "runs under autocast")
