"""Calls in the forward walk (``neardup-v2``): library functions, tensor methods, layers built
in ``__init__``, built-ins, and calls into the module's own code.

:class:`Calls` is the half of :class:`kernelbook_lib.neardup_trace.Tracer` that turns a call into
operations: ``F.relu(x)``, ``torch.relu(x)``, ``x.relu()``, ``x.relu_()``, ``nn.ReLU()(x)`` and a
``self.act = nn.ReLU()`` called later are all :meth:`library_fn` with the label ``relu``; a layer
of the module's own class is walked into; ``nn.Sequential`` applies its layers in order. Nothing
is run.
"""

from __future__ import annotations

import ast
import math
import re

from kernelbook_lib.neardup_names import (
    CREATION_NAMES, IDENTITY_NAMES, LAYOUT_NAMES, META_NAMES, ONE, RANDOM_NAMES, SELECTING_KEYWORDS, UNKNOWN, ZERO, Const,
    canonical_name,
)  # fmt: skip
from kernelbook_lib.neardup_values import BUILTIN_CONST, CONTAINERS, NONE, ClassRef, Fn, Group, Lib, Method, Mod, Super, Tup

#: Library roots whose functions on constants are folded (``math.sqrt(2)`` is a constant).
_MATH_ROOTS = frozenset({"math", "numpy", "np", "scipy"})
#: Functions that return (values, indices) when given a dimension.
_WITH_INDICES = {"max": "argmax", "min": "argmin", "median": "argmedian", "mode": "argmode", "kthvalue": "argkthvalue",
                 "sort": "argsort", "topk": "argtopk", "cummax": "argcummax", "cummin": "argcummin"}  # fmt: skip
#: Layers and functions whose weights are parameters of the layer: their parameter operands
#: are not part of the task (``F.conv2d(x, self.weight)`` is ``conv2d(x)``, like ``nn.Conv2d``).
_WEIGHTED = re.compile(r"^(conv(transpose)?\d?d|linear|bilinear|embedding|embeddingbag|layernorm|groupnorm|batchnorm|"
                       r"instancenorm|localresponsenorm|rmsnorm|prelu|addmm)$")  # fmt: skip
#: Library layers with state of their own (weights, a recurrent state).
_STATEFUL = frozenset("lstm gru rnn lstmcell grucell rnncell multiheadattention transformer transformerencoder "
                      "transformerdecoder transformerencoderlayer transformerdecoderlayer".split())  # fmt: skip
#: The names :meth:`Calls.library_fn` treats one by one (the others are one generic operation).
_SPECIAL = frozenset(
    "add sub rsub mul div pow floatpower square reciprocal neg matmul addmm addbmm baddbmm addmv addr addcmul addcdiv "
    "amax amin maximum minimum clamp clampmin clampmax hardtanh relu6 threshold where gt lt ge le eq ne narrow select "
    "indexselect gather take takealongdim chunk split unbind tensorsplit hsplit vsplit cat einsum dropout".split()
) | frozenset(_WITH_INDICES)
_MATH_FOLD = {"sqrt": math.sqrt, "exp": math.exp, "log": math.log, "log2": math.log2, "log10": math.log10,
              "floor": math.floor, "ceil": math.ceil, "abs": abs, "pow": math.pow, "tanh": math.tanh,
              "sin": math.sin, "cos": math.cos, "erf": math.erf}  # fmt: skip
_EINSUM_LETTER = re.compile(r"[A-Za-z]")


def _einsum_label(equation: str) -> str:
    """An einsum equation with its letters renamed in order of appearance (``bij,bjk->bik`` and
    ``nqd,nkd->nqk``-like renamings are one operation)."""
    names: dict[str, str] = {}

    def rename(m: re.Match) -> str:
        return names.setdefault(m.group(0), chr(ord("a") + len(names) % 26))

    return "einsum:" + _EINSUM_LETTER.sub(rename, equation.replace(" ", ""))


def flat_items(value: Tup) -> tuple[list, bool]:
    """A list's items with the items its loops appended, and whether any were (or it is
    ``repeated``)."""
    items, repeated = [], value.repeated
    for item in value.items:
        if type(item) is Group:
            items += item.items
            repeated = True
        else:
            items.append(item)
    return items, repeated


#: Layers with a bias add, and the position of their ``bias`` argument.
_BIASED = {"linear": 2, "bilinear": 3, "conv1d": 7, "conv2d": 7, "conv3d": 7, "convtranspose1d": 8,
           "convtranspose2d": 8, "convtranspose3d": 8}  # fmt: skip


def _grouped(groups) -> bool:
    """A ``groups`` argument that is given and not known to be 1."""
    return groups is not None and groups is not NONE and not (type(groups) is Const and groups.number() == 1)


_LAYOUT_KIND = {"view": "reshape", "viewas": "reshape", "reshapeas": "reshape", "flatten": "reshape", "unflatten": "reshape",
                "squeeze": "reshape", "unsqueeze": "reshape", "swapaxes": "transpose", "swapdims": "transpose",
                "movedim": "transpose", "t": "transpose", "expandas": "expand", "broadcastto": "expand", "tile": "repeat"}  # fmt: skip


def _layout_label(c: str, args: list) -> str:
    """A layout change as an operation (in a module that does nothing else): its kind and, for a
    permutation, the order of the dimensions (the whole task of a space-to-depth block)."""
    kind = _LAYOUT_KIND.get(c, c)
    flat = [v for a in args for v in (a.items if type(a) is Tup else [a])]
    if kind in ("permute", "transpose"):
        dims = [str(v.value) if type(v) is Const and isinstance(v.value, int) else "?" for v in flat]
        return f"layout:{kind}:{','.join(dims)}"
    return f"layout:{kind}:{len(flat)}"


def _is_one(value) -> bool:
    """1, or a tuple of 1s (an output size of one)."""
    if type(value) is Const:
        return value.number() == 1
    return type(value) is Tup and bool(value.items) and all(type(v) is Const and v.number() == 1 for v in value.items)


class Calls:
    """Call handling of :class:`kernelbook_lib.neardup_trace.Tracer` (it provides ``g``,
    ``expr``, ``operand``, ``invoke``, ``instantiate``, ``method``, ``library_base``, ``join``,
    ``matmul``, ``iteration``, ``element``, ``tick``)."""

    def call(self, node: ast.Call, env: dict):
        self.tick()
        args: list = []
        for a in node.args:
            if type(a) is ast.Starred:
                value = self.expr(a.value, env)
                if type(value) is Tup and not value.repeated and value.keys is None:
                    args += value.items
                elif type(value) is Mod and value.kind in ("list", "seq") and type(value.items) is Tup:
                    args += value.items.items
                else:
                    args.append(value)
            else:
                args.append(self.expr(a, env))
        kwargs: dict = {}
        for k in node.keywords:
            value = self.expr(k.value, env)
            if k.arg:
                kwargs[k.arg] = value
            elif type(value) is Tup and value.keys:
                kwargs.update({key.value: v for key, v in zip(value.keys, value.items) if type(key) is Const and isinstance(key.value, str)})
        func = node.func
        if type(func) is ast.Name and func.id == "super" and "super" not in env:
            owner = env.get("__self__")
            return Super(owner, env.get("__class__", "")) if type(owner) is Mod else UNKNOWN
        return self.call_value(self.expr(func, env), args, kwargs)

    def call_value(self, callee, args: list, kwargs: dict):
        kind = type(callee)
        if kind is Mod:
            return self.apply_module(callee, args, kwargs)
        if kind is Fn:
            return self.invoke(callee, args, kwargs)
        if kind is ClassRef:
            return self.instantiate(callee.name, args, kwargs)
        if kind is Lib:
            return self.library(callee.path, args, kwargs)
        if kind is Method:
            return self.method_call(callee.value, callee.name, args, kwargs)
        return self.opaque("call", args, kwargs)

    # the module's layers ----------------------------------------------------------------------

    def apply_module(self, mod: Mod, args: list, kwargs: dict):
        kind = mod.kind
        if kind == "op":
            if mod.label == "identity":
                return args[0] if args else UNKNOWN
            return self.library_fn(mod.label, args, {k: v for k, v in kwargs.items() if type(v) is int}, layer=True, instance=mod.serial)
        if kind == "seq":
            value = args[0] if args else UNKNOWN
            items = mod.items
            for layer in items.items:
                if type(layer) is Group:
                    for inner in layer.items:
                        value = self.call_value(inner, [value], {})
                    value = self.g.node("loop", (value,)) if type(value) is int else value
                else:
                    value = self.call_value(layer, [value], {})
            if items.repeated and type(value) is int:
                value = self.g.node("loop", (value,))
            return value
        if kind == "own":
            found = self.method(mod.cls, "forward")
            if found is not None:
                return self.invoke(Fn(found[0], mod, found[1]), args, kwargs)
            base = self.library_base(mod.cls)
            return self.library_fn(base, args, {}, layer=True) if base else self.opaque("module", args, kwargs)
        if kind == "alt":
            values = [self.call_value(m, args, kwargs) for m in mod.items]
            out = values[0]
            for v in values[1:]:
                out = self.join(out, v)
            return out
        return self.opaque("module", args, kwargs)

    def construct(self, name: str, args: list, kwargs: dict, external: bool = False):
        """A library layer built in ``__init__`` (``nn.Linear(...)``): what calling it does."""
        c = canonical_name(name)
        container = CONTAINERS.get(c)
        if container == "params":
            return Tup([self.g.fresh("param")], repeated=True)
        if container is not None:
            items: list = []
            repeated = False
            for a in args:
                if type(a) is Tup:
                    items += a.items
                    repeated |= a.repeated
                elif type(a) is Mod and a.kind in ("list", "seq") and type(a.items) is Tup:
                    items += a.items.items
                    repeated |= a.items.repeated
                else:
                    items.append(a)
            return Mod(container, items=Tup(items, repeated))
        if c == "parameter":
            return self.g.fresh("param")
        if c in ("identity", "flatten", "unflatten"):
            return Mod("op", "identity")
        numbers = [a.number() if type(a) is Const else None for a in args]
        if c in ("hardtanh", "threshold", "relu6", "clamp"):
            lo = numbers[0] if numbers else (kwargs["min_val"].number() if type(kwargs.get("min_val")) is Const else -1.0 if c == "hardtanh" else None)
            hi = numbers[1] if len(numbers) > 1 else (kwargs["max_val"].number() if type(kwargs.get("max_val")) is Const else 1.0 if c == "hardtanh" else None)
            if c == "relu6" or (c == "hardtanh" and (lo, hi) == (0, 6)):
                return Mod("op", "relu6")
            if c == "threshold" and lo == 0 and hi == 0:
                return Mod("op", "relu")
        if c in ("layernorm", "batchnorm", "groupnorm", "instancenorm"):
            affine = kwargs.get("elementwise_affine" if c == "layernorm" else "affine")
            known = affine.value if type(affine) is Const and isinstance(affine.value, bool) else c != "instancenorm"
            if not known:
                c += ":noaffine"
        if c.startswith("adaptiveavgpool") and ((args and _is_one(args[0])) or _is_one(kwargs.get("output_size"))):
            return Mod("op", "mean")
        if c.startswith("conv") and _grouped(kwargs.get("groups", args[6] if len(args) > 6 else None)):
            c += ":grouped"  # a grouped (depthwise) convolution is another operation than a dense one
        if c.split(":")[0] in _BIASED:
            bias = kwargs.get("bias", args[_BIASED[c.split(":")[0]]] if len(args) > _BIASED[c.split(":")[0]] else None)
            if type(bias) is Const and bias.value is False:
                c += ":nobias"  # a layer without its bias add does one operation less
        label = c + self.selectors(args, kwargs)
        base = c.split(":")[0]
        return Mod("op", label, serial=self.g.serial() if external or _WEIGHTED.match(base) or base in _STATEFUL else None)

    def selectors(self, args: list, kwargs: dict) -> str:
        """``:value`` for each string argument that selects an operation (``mode='bilinear'``,
        ``reduction='sum'``), defaults left out."""
        out = []
        for key, value in kwargs.items():
            if key in SELECTING_KEYWORDS and type(value) is Const and isinstance(value.value, str):
                if value.value != SELECTING_KEYWORDS[key] and value.value.isidentifier():
                    out.append(value.value)
        for value in args:
            if type(value) is Const and isinstance(value.value, str) and value.value.isidentifier() and len(value.value) <= 24:
                out.append(value.value)
        return "".join(":" + v for v in out if v not in ("mean", "nearest", "zeros", "constant"))

    # methods ----------------------------------------------------------------------------------

    def method_call(self, value, name: str, args: list, kwargs: dict):
        kind = type(value)
        if kind is int:
            return self.tensor_method(value, name, args, kwargs)
        if kind is Const and canonical_name(name) in RANDOM_NAMES:
            return self.g.fresh("rand")
        if kind is Super:
            return self.super_call(value, name, args, kwargs)
        if kind is Tup:
            if name in ("items",) and value.keys is not None:
                return Tup([Tup([k, v]) for k, v in zip(value.keys, value.items)], value.repeated)
            if name == "values":
                return Tup(list(value.items), value.repeated)
            if name == "keys":
                return Tup(list(value.keys or []), value.repeated)
            if name in ("append", "extend", "insert"):
                if name == "append" and args:
                    self.append_item(value, args[0])
                elif name == "extend" and args and type(args[0]) is Tup:
                    for item in args[0].items:
                        self.append_item(value, item)
                return NONE
            if name == "get" and value.keys is not None and args and type(args[0]) is Const:
                for k, v in zip(value.keys, value.items):
                    if type(k) is Const and k.value == args[0].value:
                        return v
                return args[1] if len(args) > 1 else NONE
            return UNKNOWN
        if kind is Mod:
            if value.kind in ("list", "seq") and name in ("append", "extend", "add_module") and args:
                if name == "extend" and type(args[0]) is Tup:
                    for item in args[0].items:
                        self.append_item(value.items, item)
                elif name != "extend":
                    self.append_item(value.items, args[-1])
                return NONE
            if value.kind == "list" and name in ("values", "children", "modules"):
                return value.items
            if value.kind in ("list", "seq") and name == "items":
                return Tup([Tup([UNKNOWN, v]) for v in value.items.items], value.items.repeated)
            return self.opaque(f"{value.label or value.cls or value.kind}.{name}", args, kwargs) if any(
                type(a) is int for a in args) else UNKNOWN  # fmt: skip
        return UNKNOWN

    def super_call(self, sup: Super, name: str, args: list, kwargs: dict):
        inst, cls = sup.inst, sup.cls
        chain = self.mro(inst.cls)
        start = next((i + 1 for i, c in enumerate(chain) if c.name == cls), len(chain))
        found = self.method(inst.cls, name, start)
        if found is not None:
            return self.invoke(Fn(found[0], inst, found[1]), args, kwargs)
        if name == "__init__":
            return NONE
        base = self.library_base(inst.cls)
        if name == "forward" and base:
            return self.library_fn(base, args, {}, layer=True)
        return self.opaque(name, args, kwargs)

    def tensor_method(self, x: int, name: str, args: list, kwargs: dict):
        return self.library_fn(canonical_name(name), [x, *args], kwargs, method=name)

    # library names ----------------------------------------------------------------------------

    def library(self, path: str, args: list, kwargs: dict):
        root, _, rest = path.partition(".")
        last = path.rsplit(".", 1)[-1]
        if root == "builtins":
            return self.builtin(last, args, kwargs)
        if ".init." in f".{rest}." or last in ("no_grad", "enable_grad", "set_grad_enabled", "autocast"):
            return UNKNOWN
        if last == "Parameter":
            return self.g.fresh("param")
        if last == "Variable":  # torch.autograd.Variable(x) is x
            return args[0] if args else UNKNOWN
        if root in _MATH_ROOTS and all(type(a) is Const for a in args):
            fold = _MATH_FOLD.get(last)
            numbers = [a.number() for a in args]
            if fold is not None and numbers and all(n is not None for n in numbers):
                try:
                    return Const(fold(*numbers))
                except (ValueError, TypeError, OverflowError, ZeroDivisionError):
                    return UNKNOWN
            return UNKNOWN
        if last[:1].isupper() and (path.startswith("torch.nn.") or root not in ("torch", "math", "numpy", "np")):
            if root == "torch" and ("Tensor" in last or last in ("Size", "device", "dtype")):
                return UNKNOWN
            if not path.startswith("torch.nn.") and any(type(a) is int for a in [*args, *kwargs.values()]):
                return self.library_fn(canonical_name(last), args, kwargs)  # Normal(mu, sigma): a value
            return self.construct(last, args, kwargs, external=not path.startswith("torch.nn."))
        if root == "torch" and ".distributions." in path and last[:1].isupper():
            return self.library_fn(canonical_name(last), args, kwargs)
        if root == "torch" and last[:1].isupper():  # torch.FloatTensor(...) and the like
            return UNKNOWN
        return self.library_fn(canonical_name(last), args, kwargs)

    def builtin(self, name: str, args: list, kwargs: dict):
        g = self.g
        if name == "hasattr" and len(args) == 2 and type(args[0]) is Mod and args[0].kind == "own" and type(args[1]) is Const:
            attr = args[1].value  # the instance is built: what it has is known
            return Const(attr in args[0].attrs or self.method(args[0].cls, str(attr)) is not None)
        if name in BUILTIN_CONST:
            return UNKNOWN
        if name == "range":
            return Tup([UNKNOWN], repeated=True)
        if name in ("list", "tuple", "set", "sorted", "reversed", "iter", "frozenset"):
            if not args:
                return Tup([])
            value = args[0]
            if type(value) is Mod and value.kind in ("list", "seq"):
                value = value.items
            if type(value) is Tup:
                items = list(value.items)
                return Tup(items[::-1] if name == "reversed" else items, value.repeated)
            if type(value) is int:
                return Tup([g.node("part", (value,))], repeated=True)
            return Tup([UNKNOWN], repeated=True)
        if name == "dict":
            return Tup(list(kwargs.values()), keys=[Const(k) for k in kwargs])
        if name == "enumerate":
            items = self.iteration(args[0]) if args else None
            if items is not None:
                return Tup([Tup([Const(i), v]) for i, v in enumerate(items)])
            return Tup([Tup([UNKNOWN, self.element(args[0]) if args else UNKNOWN])], repeated=True)
        if name == "zip":
            lists = [self.iteration(a) for a in args]
            if lists and all(items is not None for items in lists):
                return Tup([Tup(list(group)) for group in zip(*lists)])
            return Tup([Tup([self.element(a) for a in args])], repeated=True)
        if name in ("max", "min") and len(args) == 2:
            return g.extreme("maximum" if name == "max" else "minimum", self.operand(args[0]), self.operand(args[1]))
        if name in ("abs", "float", "int", "bool", "sum", "max", "min", "pow", "round"):
            if name == "pow" and len(args) == 2:
                return g.power(self.operand(args[0]), self.operand(args[1]))
            if name == "sum" and args and type(args[0]) is Tup:
                items, repeated = flat_items(args[0])
                terms = [self.operand(v) for v in items]
                total = g.add(terms) if terms else ZERO
                return g.node("loop", (total,)) if repeated and type(total) is int else total
            value = self.operand(args[0]) if args else UNKNOWN
            if type(value) is not int:
                return UNKNOWN
            return g.unary(name, value) if name in ("abs", "max", "min", "sum") else value
        if name == "getattr" and len(args) >= 2 and type(args[1]) is Const and isinstance(args[1].value, str):
            value = self.attribute(args[0], args[1].value)
            return args[2] if type(value) is Method and len(args) > 2 else value
        if name == "map" and len(args) == 2:
            return Tup([self.call_value(args[0], [self.element(args[1])], {})], repeated=True)
        return self.opaque(name, args, kwargs) if any(type(a) is int for a in args) else UNKNOWN

    def library_fn(self, c: str, args: list, kwargs: dict, layer: bool = False, method: str | None = None, instance: object = None):
        """Operation ``c`` (a canonical name) on ``args``: the dispatch of every function,
        tensor method and library layer (``layer``: its arguments are all inputs)."""
        g = self.g
        if not args and kwargs:  # F.relu(input=x), torch.split(tensor=x, ...)
            first = next((k for k in ("input", "tensor", "x", "a") if k in kwargs), None)
            if first is not None:
                kwargs = dict(kwargs)
                args = [kwargs.pop(first)]
        if c in IDENTITY_NAMES:
            x = args[0] if args else UNKNOWN
            if self.keep_layout and c in LAYOUT_NAMES and type(x) is int:
                return g.node(_layout_label(c, args[1:]), (x,))
            return x
        if c in META_NAMES:
            return UNKNOWN
        if c in CREATION_NAMES:
            if c.startswith("zeros") or c == "newzeros":
                return ZERO
            if c.startswith("ones") or c == "newones":
                return ONE
            if c in ("tensor", "astensor") and args and type(args[0]) in (Const, int):
                return args[0]
            return UNKNOWN
        if c in RANDOM_NAMES:
            return g.fresh("rand")
        ops = [self.operand(a) for a in args]
        x = ops[0] if ops else UNKNOWN
        if c in ("rearrange", "repeat", "reduce") and len(args) > 1 and type(args[1]) is Const and isinstance(args[1].value, str):
            return x if c != "reduce" else g.node("reduce", (x,)) if type(x) is int else x  # einops
        tensors = [o for o in [*ops, *(self.operand(v) for v in kwargs.values())] if type(o) is int]
        if not tensors:
            if not (layer and args):
                return UNKNOWN
            tensors = [g.leaf("const")]  # a layer applied to a created tensor (coordinates) is an operation
            ops = [tensors[0], *ops[1:]]
            x = tensors[0]
        second = ops[1] if len(ops) > 1 else UNKNOWN
        if c in _SPECIAL or c.startswith("adaptiveavgpool"):
            if c == "add":
                return g.add([x, second])
            if c == "sub":
                return g.sub(x, second)
            if c == "rsub":
                return g.sub(second, x)
            if c == "mul":
                return g.mul([x, second])
            if c == "div":
                if "rounding_mode" in kwargs:
                    return g.node("floordiv", (g.operand(x), g.operand(second)))
                return g.div(x, second)
            if c in ("pow", "floatpower"):
                return g.power(x, second if len(ops) > 1 else self.operand(kwargs.get("exponent", UNKNOWN)))
            if c == "square":
                return g.power(x, Const(2))
            if c == "reciprocal":
                return g.reciprocal(x)
            if c == "neg":
                return g.neg(x)
            if c == "matmul" and len(ops) == 2:
                return self.matmul(x, second)
            if c in ("addmm", "addbmm", "baddbmm", "addmv", "addr") and len(ops) >= 3:
                return g.add([x, self.matmul(ops[1], ops[2])])
            if c in ("addcmul", "addcdiv") and len(ops) >= 3:
                return g.add([x, (g.mul([ops[1], ops[2]]) if c == "addcmul" else g.div(ops[1], ops[2]))])
            if c in ("amax", "amin"):  # the values of max/min along dimensions, without indices
                return g.unary(c[1:], x, instance)
            if c in ("maximum", "minimum") and len(ops) == 2:
                return g.extreme(c, x, second)
            if c in _WITH_INDICES and not layer:
                # torch.max(x, y) of two tensors (a created zero, or a float, is a tensor: dims are ints)
                if c in ("max", "min") and len(ops) > 1 and (
                    type(second) is int or second is ZERO or second is ONE or isinstance(second.value, float)):  # fmt: skip
                    return g.extreme("maximum" if c == "max" else "minimum", x, second)
                if len(ops) > 1 or "dim" in kwargs or c in ("sort", "topk", "kthvalue"):
                    if type(x) is not int:
                        return UNKNOWN
                    return Tup([g.node(c, (x,)), g.node(_WITH_INDICES[c], (x,))])
            if c in ("clamp", "clampmin", "clampmax", "hardtanh", "relu6", "threshold"):
                return self.clamp_like(c, ops, kwargs)
            if c == "where" and len(ops) == 3:
                return g.where(x, second, ops[2])
            if c in ("gt", "lt", "ge", "le", "eq", "ne") and len(ops) == 2:
                return g.compare(c, x, second)
            if c.startswith("adaptiveavgpool") and len(args) > 1 and _is_one(args[1]) and type(x) is int:
                return g.unary("mean", x, instance)  # a global average pool is a mean over the spatial dims
            if c in ("narrow", "select", "indexselect", "gather", "take", "takealongdim") and type(x) is int:
                spec = tuple(a.value if type(a) is Const else "t" for a in args[1:])
                return g.node("index", (x, *[t for t in tensors if t != x]), spec)
            if c in ("chunk", "split", "unbind", "tensorsplit", "hsplit", "vsplit"):
                return self.split(c, x, args, kwargs)
            if c == "cat":
                parts, repeated = flat_items(args[0]) if args and type(args[0]) is Tup else (args, False)
                operands = [self.operand(v) for v in parts]
                kids = tuple(p for p in operands if type(p) is int)
                if len(operands) == 1 and kids and not repeated:
                    return kids[0]
                # a created tensor joined to the input (zeros to pad channels, coordinates) is an operand
                consts = tuple(g.leaf("const") for p in operands if type(p) is Const)
                return g.node("cat", kids + consts) if kids else UNKNOWN
            if c == "einsum" and args and type(args[0]) is Const and isinstance(args[0].value, str):
                rest = args[1].items if len(args) == 2 and type(args[1]) is Tup else args[1:]
                kids = tuple(p for p in (self.operand(v) for v in rest) if type(p) is int)
                return g.node(_einsum_label(args[0].value), kids) if kids else UNKNOWN
            if c == "dropout":
                training = kwargs.get("training", args[2] if len(args) > 2 else None)
                if type(training) is Const and training.value is False:
                    return x
                return g.fresh("dropout", (x,)) if type(x) is int else x
        label = c + self.selectors(args[1:] if not layer else [], kwargs)
        if c.startswith("conv") and not layer and _grouped(kwargs.get("groups", args[6] if len(args) > 6 else None)):
            label += ":grouped"
        if c in _BIASED and not layer:  # F.linear(x, w) and F.conv2d(x, w, None) add no bias
            bias = kwargs.get("bias", args[2] if len(args) > 2 else None)
            if bias is None or bias is NONE:
                label += ":nobias"
        if _WEIGHTED.match(c.split(":")[0]):
            # A layer's inputs are its operands; a function's are its first argument and any
            # weight computed in the forward (weight standardisation), not its parameters.
            given = [*ops[1:], *(self.operand(v) for v in kwargs.values())]
            kids = tensors if layer else [o for o in ops[:1] if type(o) is int] + [
                o for o in given if type(o) is int and g.label[o] != "param"]  # fmt: skip
            if not layer:  # F.conv2d(x, self.w1) and F.conv2d(x, self.w2) are two nodes
                weights = tuple(o for o in given if type(o) is int and g.label[o] == "param")
                instance = weights or None
            return g.call(label, kids, instance) if kids else UNKNOWN
        operands = tensors
        if len(operands) == 1 and operands[0] is x:
            return g.unary(label, x, instance)
        return g.call(label, operands, instance)

    def clamp_like(self, c: str, ops: list, kwargs: dict):
        g = self.g
        x = ops[0]
        if type(x) is not int:
            return UNKNOWN

        def bound(position: int, *names: str):
            if len(ops) > position:
                return ops[position]
            for name in names:
                if name in kwargs:
                    return self.operand(kwargs[name])
            return None

        if c == "relu6":
            return g.clamp(x, ZERO, Const(6))
        if c == "threshold":
            t, v = bound(1, "threshold"), bound(2, "value")
            if type(t) is Const and type(v) is Const and t.number() == 0 and v.number() == 0:
                return g.node("relu", (x,))
            return g.node("threshold", (x,))
        if c == "hardtanh":
            lo, hi = bound(1, "min_val"), bound(2, "max_val")
            return g.clamp(x, lo if type(lo) is Const else Const(-1), hi if type(hi) is Const else Const(1))
        if c == "clampmin":
            lo, hi = bound(1, "min"), None
        elif c == "clampmax":
            lo, hi = None, bound(1, "max")
        else:
            lo, hi = bound(1, "min"), bound(2, "max")
        lo = None if lo is NONE else lo
        hi = None if hi is NONE else hi
        if type(lo) is int or type(hi) is int:
            out = x
            if lo is not None:
                out = g.extreme("maximum", out, lo)
            if hi is not None:
                out = g.extreme("minimum", out, hi)
            return out
        return g.clamp(x, lo, hi)

    def split(self, name: str, x, args: list, kwargs: dict):
        """``chunk``/``split``/``unbind``: the parts, numbered when their count is known."""
        g = self.g
        if type(x) is not int:
            return UNKNOWN
        count = None
        spec = args[1] if len(args) > 1 else kwargs.get("chunks", kwargs.get("split_size_or_sections", kwargs.get("split_size")))
        if name.startswith("chunk") and type(spec) is Const and isinstance(spec.value, int):
            count = spec.value
        elif type(spec) is Tup and not spec.repeated:
            count = len(spec.items)
        if count is not None and 0 < count <= 16:
            return Tup([g.node("part", (x,), k) for k in range(count)])
        return Tup([g.node("part", (x,))], repeated=True)
