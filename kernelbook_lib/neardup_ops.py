"""The operation graph of a module's forward path (``neardup-v2``): canonical operations, built
and rewritten as they are created.

:mod:`kernelbook_lib.neardup_trace` walks a module's ``forward`` and calls the builders here for
every operation it meets. A :class:`Graph` is a hash-consed DAG: a node is a canonical operation
label applied to operand nodes, made once, so the same computation written twice is one node
(``x * torch.sigmoid(x)`` and ``gate = x.sigmoid(); x * gate``); two layers with weights of their
own applied to one input stay two nodes (``instance``). The builders spell one operation one way:

- the functional, module, method and operator forms of an operation are one label
  (:func:`~kernelbook_lib.neardup_names.canonical_name`: ``F.relu``, ``nn.ReLU``, ``x.relu()``,
  ``x.relu_()`` are ``relu``);
- ``+`` and ``*`` are n-ary and commutative (``x * 2 * y`` is ``y * x * 2``), ``a - b`` is
  ``a + (-1) b``, ``a / b`` is ``a * reciprocal(b)``, a product by a constant is a ``scale``,
  ``x ** 2``/``x * x`` is ``square``, ``x ** 0.5`` ``sqrt``, ``1 / sqrt`` ``rsqrt``; constants are
  one leaf, ``const`` (their values are read only to recognise a definition);
- written-out definitions become the operation they define: sigmoid as ``1 / (1 + exp(-x))``
  or ``exp(x) / (1 + exp(x))``, SiLU as ``x * sigmoid(x)``, hard-sigmoid as ``relu6(x + 3) / 6``
  or ``clamp(x / 6 + 0.5, 0, 1)``, hard-swish as ``x * hardsigmoid(x)``, GELU in its erf and tanh
  forms, ReLU as ``clamp(min=0)``, ``max(x, 0)``, ``where(x > 0, x, 0)`` or ``x * (x > 0)``, ReLU6
  as ``clamp(0, 6)``, leaky ReLU as ``max(x, c x)``, softplus as ``log(1 + exp(x))``, mish as
  ``x * tanh(softplus(x))``, GLU as ``a * sigmoid(b)`` of two halves, log-softmax and
  log-sigmoid as ``log`` of them, softmax as ``exp(x) / sum(exp(x))`` (with or without the max
  shift), logsumexp, ``sqrt(var)`` as ``std``, ``mean((x - mean(x)) ** 2)`` as ``var``, layer
  norm written out (centred input over its standard deviation, or times ``rsqrt`` of its
  variance; a parameter scale and shift are its affine map), RMS and L2 normalisation, MSE and
  L1 losses as ``mean`` of the squared or absolute difference.

Nothing here parses or runs code; :mod:`kernelbook_lib.neardup_trace` does the parsing (with
:mod:`ast`).
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable

from kernelbook_lib.neardup_names import COMMUTATIVE, ONE, UNKNOWN, ZERO, Const


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _fold(const: Const | None, op: Const, combine: Callable[[float, float], float]) -> Const:
    """Two constants of one sum or product as one (a value only when both have one)."""
    if const is None:
        return op
    a, b = const.number(), op.number()
    return Const(combine(a, b) if a is not None and b is not None else None)


class Graph:
    """A hash-consed DAG of canonical operations (see the module docstring). ``label[i]`` and
    ``kids[i]`` describe node ``i``; ``sig[i]`` is a digest of the whole computation below it
    (the same in every module: it names the computation, not the node)."""

    __slots__ = ("label", "kids", "sig", "_index", "budget", "_serial")

    def __init__(self, budget: int = 4000) -> None:
        self.label: list[str] = []
        self.kids: list[tuple[int, ...]] = []
        self.sig: list[str] = []
        self._index: dict[tuple, int] = {}
        self.budget = budget
        self._serial = 0

    # raw nodes --------------------------------------------------------------------------------

    def node(self, label: str, kids: tuple[int, ...] = (), instance: object = None) -> int:
        """The node ``label(kids)``, made once. ``instance`` tells apart nodes that compute the
        same thing from different state (two layers with their own weights applied to one
        input, two parameters, two dropouts, two slices): it is not part of ``sig``."""
        sig_of = self.sig
        if label in COMMUTATIVE:
            kids = tuple(sorted(kids, key=lambda k: (sig_of[k], k)))
        # Made once per operation on the same operand *nodes*: two operands may compute the same
        # thing (equal sigs) from different state (two layers) and stay two.
        key = (label, kids, instance)
        found = self._index.get(key)
        if found is not None:
            return found
        sig = digest(label + "(" + ",".join([sig_of[k] for k in kids]) + ")")
        if len(self.label) >= self.budget:
            raise OverflowError("operation graph too large")
        self._index[key] = n = len(self.label)
        self.label.append(label)
        self.kids.append(kids)
        self.sig.append(sig)
        return n

    def leaf(self, label: str, instance: object = None) -> int:
        return self.node(label, (), instance)

    def fresh(self, label: str, kids: tuple[int, ...] = ()) -> int:
        """A node of its own (a parameter, a random draw, a dropout)."""
        return self.node(label, kids, self.serial())

    def serial(self) -> int:
        """A number not used before in this graph (an ``instance``)."""
        self._serial += 1
        return self._serial

    def operand(self, value: int | Const) -> int:
        return self.leaf("const") if type(value) is Const else value

    def is_(self, node: int, label: str) -> bool:
        return type(node) is int and self.label[node] == label

    def kid(self, node: int, label: str) -> int | None:
        """``node``'s only operand when ``node`` is a ``label`` of one operand."""
        if type(node) is int and self.label[node] == label and len(self.kids[node]) == 1:
            return self.kids[node][0]
        return None

    # arithmetic -------------------------------------------------------------------------------

    def add(self, operands: list[int | Const]) -> int | Const:
        terms: list[int] = []
        const: Const | None = None
        for op in operands:
            if type(op) is Const:
                const = _fold(const, op, operator.add)
            elif self.label[op] == "add":
                terms.extend(k for k in self.kids[op] if self.label[k] != "const")
                if any(self.label[k] == "const" for k in self.kids[op]):
                    const = UNKNOWN if const is None else Const(None)
            else:
                terms.append(op)
        if not terms:
            return const if const is not None else ZERO
        if len(terms) == 1 and const is None:
            return terms[0]
        if len(terms) == 2 and const is None:  # ... plus a parameter: the affine shift, the bias
            for a, b in ((terms[0], terms[1]), (terms[1], terms[0])):
                if self.label[a].endswith(":scaled") and self.label[b] == "param":
                    return self.node(self.label[a].replace(":scaled", ""), self.kids[a])
                if self.label[a] == "linear:nobias" and self.label[b] == "param":  # x @ W + b
                    return self.node("linear", self.kids[a], a)
        return self.node("add", tuple(terms) + ((self.leaf("const"),) if const is not None else ()))

    def neg(self, x: int | Const) -> int | Const:
        if type(x) is Const:
            v = x.number()
            return Const(-v if v is not None else None)
        return self.mul([x, Const(-1)])

    def sub(self, a: int | Const, b: int | Const) -> int | Const:
        return self.add([a, self.neg(b)])

    def mul(self, operands: list[int | Const]) -> int | Const:
        factors: list[int] = []
        const: Const | None = None
        for op in operands:
            if type(op) is Const:
                const = _fold(const, op, operator.mul)
            elif self.label[op] in ("mul", "scale"):
                for k in self.kids[op]:
                    if self.label[k] == "const":
                        const = UNKNOWN if const is None else Const(None)
                    else:
                        factors.append(k)
                if self.label[op] == "scale":
                    const = UNKNOWN if const is None else Const(None)
            else:
                factors.append(op)
        if not factors:
            return const if const is not None else ONE
        factors = self._rewrite_product(factors, const is not None)
        if factors and type(factors[-1]) is Const:  # a rewrite used the constant up
            factors.pop()
            const = None
        # Repeated factors are a power: x * x is square(x).
        counts: dict[int, int] = {}
        for f in factors:
            counts[f] = counts.get(f, 0) + 1
        if any(n > 1 for n in counts.values()):
            factors = [self.power(f, Const(n)) if n > 1 else f for f, n in counts.items()]  # type: ignore[misc]
            factors = [f for f in factors if type(f) is int]
        if len(factors) == 1:
            return self.node("scale", (factors[0],)) if const is not None else factors[0]
        return self.node("mul", tuple(factors) + ((self.leaf("const"),) if const is not None else ()))

    def _rewrite_product(self, factors: list[int], has_const: bool) -> list:
        """Written-out definitions inside a product (``factors``, the constant aside)."""
        out = list(factors)
        used_const = False
        changed = True
        while changed:
            changed = False
            # relu6(x + c) * c  ->  hardsigmoid(x)   (x * relu6(x + 3) / 6 is x * hardsigmoid(x))
            if has_const and not used_const:
                for i, f in enumerate(out):
                    inner = self.kid(f, "relu6")
                    if inner is not None and self._shifted(inner) is not None:
                        out[i] = self.node("hardsigmoid", (self._shifted(inner),))
                        used_const = changed = True
                        break
            # x * sigmoid(x) -> silu(x); x * hardsigmoid(x) -> hardswish(x); x * tanh(softplus(x)) -> mish
            for gate, result in (("sigmoid", "silu"), ("hardsigmoid", "hardswish"), ("tanh", None)):
                for i, f in enumerate(out):
                    x = self.kid(f, gate)
                    if x is None:
                        continue
                    if result is None:
                        inner = self.kid(x, "softplus")
                        if inner is None or inner not in out:
                            continue
                        x, result_label = inner, "mish"
                    else:
                        result_label = result
                    if x in out and out.index(x) != i:
                        j = out.index(x)
                        rest = [g for k, g in enumerate(out) if k not in (i, j)]
                        out = [*rest, self.node(result_label, (x,))]
                        changed = True
                        break
                if changed:
                    break
            if changed:
                continue
            # written-out normalisations: (x - mean(x)) / std(x) and its spellings, x * rsqrt(mean(x**2)),
            # x / norm(x)
            for i, f in enumerate(out):
                x = self._normaliser(f, out)
                if x is not None:
                    kind, base, j = x
                    rest = [g for k, g in enumerate(out) if k not in (i, j)]
                    out = [*rest, self.node(kind, (base,))]
                    changed = True
                    break
            if changed:
                continue
            # a written-out normalisation times a parameter: its affine scale
            if len(out) == 2 and not has_const:
                for a, b in ((out[0], out[1]), (out[1], out[0])):
                    if self.label[a].endswith(":noaffine") and self.label[b] == "param":
                        out = [self.node(self.label[a].replace(":noaffine", ":scaled"), self.kids[a])]
                        changed = True
                        break
            if changed:
                continue
            # a * sigmoid(b) for two halves of one tensor -> glu(x)
            for f in out:
                b = self.kid(f, "sigmoid")
                if b is None or not self.is_(b, "part"):
                    continue
                a = next((g for g in out if g not in (f, b) and self.is_(g, "part") and self.kids[g] == self.kids[b]), None)
                if a is not None:
                    rest = [g for g in out if g not in (f, a)]
                    out = [*rest, self.node("glu", self.kids[b])]
                    changed = True
                    break
            if changed:
                continue
            # x * (x > 0) -> relu(x)
            for i, f in enumerate(out):
                if self.is_(f, "gt") and self.label[self.kids[f][1]] == "const" and self.kids[f][0] in out:
                    x = self.kids[f][0]
                    rest = [g for k, g in enumerate(out) if k != i and g != x]
                    out = [*rest, self.node("relu", (x,))]
                    changed = True
                    break
            if changed:
                continue
            # GELU: x * (1 + erf(x * c)) [* c] and x * (1 + tanh(c * (x + c * x**3))) [* c]
            for i, f in enumerate(out):
                inner = self._shifted(f)
                if inner is None:
                    continue
                for fn in ("erf", "tanh"):
                    arg = self.kid(inner, fn)
                    if arg is None:
                        continue
                    x = self._gelu_argument(arg, cubic=fn == "tanh")
                    if x is not None and x in out:
                        rest = [g for k, g in enumerate(out) if k != i and g != x]
                        out = [*rest, self.node("gelu", (x,))]
                        used_const = True
                        changed = True
                        break
                if changed:
                    break
        if used_const and has_const:
            out.append(UNKNOWN)  # the constant was part of the definition: drop it
        return out

    def _normaliser(self, f: int, factors: list[int]) -> tuple[str, int, int] | None:
        """``(kind, x, j)`` when factor ``f`` divides ``factors[j]`` into a normalisation of ``x``."""
        inv = self.kid(f, "rsqrt")
        root = None
        if inv is None:
            inv = self.kid(f, "reciprocal")
            if inv is None:
                return None
            root = True  # 1 / s: s is a standard deviation or a norm
        spread = self._shifted(inv)
        spread = inv if spread is None else spread
        if root is None:  # 1 / sqrt(v): v is a variance or a mean square
            measure = self.kid(spread, "var") if self.is_(spread, "var") else None
            inner = self.kid(spread, "mean")
            if inner is not None and self.is_(inner, "square"):
                measure = self.kids[inner][0]
            elif measure is None:
                return None
        else:
            clamped = self.kid(spread, "clamp:min")  # max(s, eps), not s + eps
            if clamped is not None:
                spread = clamped
            measure = self.kid(spread, "std")
            if measure is None:
                norm = self.kid(spread, "norm")
                if norm is not None and norm in factors:  # F.normalize divides by max(norm, eps)
                    return "normalize" if clamped is not None else "normalize:eps", norm, factors.index(norm)
                return None
        for j, g in enumerate(factors):
            if g == f:
                continue
            centred = self._centred(g)
            if centred is not None and (measure in (g, centred)):
                return "layernorm:noaffine" + (":clamp" if root and clamped is not None else ""), centred, j
            if root is None and g == measure and self.label[f] == "rsqrt":
                return "rmsnorm:noaffine", g, j
        return None

    def _centred(self, node: int) -> int | None:
        """``x`` when ``node`` is ``x - mean(x)`` (``x`` itself may be a sum: ``a + b - mean(a + b)``
        is one flattened sum)."""
        if not self.is_(node, "add"):
            return None
        terms = self.kids[node]
        for i, term in enumerate(terms):
            mean = self.kid(term, "scale")
            x = self.kid(mean, "mean") if mean is not None else None
            if x is None:
                continue
            rest = sorted(terms[:i] + terms[i + 1 :])
            if rest == [x] or (self.is_(x, "add") and sorted(self.kids[x]) == rest):
                return x
        return None

    def _shifted(self, node: int) -> int | None:
        """``x`` when ``node`` is ``x + c``."""
        if self.is_(node, "add") and len(self.kids[node]) == 2:
            a, b = self.kids[node]
            if self.label[b] == "const":
                return a
            if self.label[a] == "const":
                return b
        return None

    def _gelu_argument(self, arg: int, cubic: bool) -> int | None:
        """The ``x`` of GELU's erf argument ``x * c`` (or ``x``), or of its tanh argument
        ``c * (x + c * x**3)`` / ``c * x + c * x**3`` / ``c * x * (1 + c * x**2)``."""
        base = self.kid(arg, "scale")
        base = arg if base is None else base
        if not cubic:
            return base
        nodes = self._below(base, 4)
        for n in nodes:
            for power in ("cube", "square"):
                x = self.kid(n, power)
                if x is not None and x in nodes | {base}:
                    return x
        return None

    def _below(self, node: int, depth: int) -> set[int]:
        seen = {node}
        frontier = [node]
        for _ in range(depth):
            frontier = [k for n in frontier for k in self.kids[n] if k not in seen]
            seen.update(frontier)
        return seen

    def power(self, x: int | Const, exponent: int | Const) -> int | Const:
        if type(x) is Const and type(exponent) is not Const:  # 2 ** x
            return self.node("pow", (self.leaf("const"), exponent))
        if type(x) is Const:
            a = x.number()
            b = exponent.number() if type(exponent) is Const else None
            try:
                return Const(a**b if a is not None and b is not None and abs(b) < 64 else None)
            except (OverflowError, ZeroDivisionError, TypeError):
                return UNKNOWN
        if type(exponent) is not Const:
            return self.node("pow", (x, exponent))
        e = exponent.number()
        named = {2.0: "square", 3.0: "cube", 0.5: "sqrt", -0.5: "rsqrt", -1.0: "reciprocal"}.get(e) if e is not None else None
        if e == 1.0:
            return x
        if named == "reciprocal":
            return self.reciprocal(x)
        if named == "sqrt":
            return self.unary("sqrt", x)
        if named == "rsqrt":
            return self.unary("rsqrt", x)
        if named is not None:
            return self.node(named, (x,))
        return self.node("pow", (x, self.leaf("const")))

    def reciprocal(self, x: int | Const) -> int | Const:
        if type(x) is Const:
            v = x.number()
            return Const(1 / v if v else None)
        # 1 / (1 + exp(-x)) is sigmoid(x)
        shifted = self._shifted(x)
        if shifted is not None:
            inner = self.kid(shifted, "exp")
            if inner is not None:
                return self.node("sigmoid", (self._unscaled(inner),))
        for a, b in (("sqrt", "rsqrt"), ("rsqrt", "sqrt"), ("reciprocal", None)):
            inner = self.kid(x, a)
            if inner is not None:
                return inner if b is None else self.node(b, (inner,))
        return self.node("reciprocal", (x,))

    def _unscaled(self, node: int) -> int:
        inner = self.kid(node, "scale")
        return node if inner is None else inner

    def div(self, a: int | Const, b: int | Const) -> int | Const:
        if type(a) is not Const and type(b) is not Const:
            # exp(x) / sum(exp(x)) is softmax(x); exp(x) / (1 + exp(x)) is sigmoid(x)
            x = self.kid(a, "exp")
            if x is not None:
                total = self.kid(b, "sum")
                if total is not None and total == a:
                    return self.node("softmax", (self._stable(x),))
                shifted = self._shifted(b)
                if shifted is not None and shifted == a:
                    return self.node("sigmoid", (x,))
        if type(a) is Const and a.number() == 1:  # 1 / b is the reciprocal, not a scaled one
            return self.reciprocal(b)
        return self.mul([a, self.reciprocal(b)])

    def _stable(self, x: int) -> int:
        """``x`` of ``x - max(x)`` (the numerically stable softmax's shift)."""
        if self.is_(x, "add") and len(self.kids[x]) == 2:
            for i in (0, 1):
                other = self.kids[x][1 - i]
                shift = self.kid(self.kids[x][i], "scale")
                if shift is not None and self.kid(shift, "max") == other:
                    return other
        return x

    # named operations -------------------------------------------------------------------------

    def unary(self, name: str, x: int | Const, instance: object = None) -> int | Const:
        """A one-operand operation with its rewrites."""
        if type(x) is Const:
            return UNKNOWN
        if instance is not None:
            return self.node(name, (x,), instance)
        if name == "log":
            shifted = self._shifted(x)
            if shifted is not None and self.is_(shifted, "exp"):
                return self.node("softplus", self.kids[shifted])
            for inner, result in (("softmax", "logsoftmax"), ("sigmoid", "logsigmoid")):
                y = self.kid(x, inner)
                if y is not None:
                    return self.node(result, (y,))
            y = self.kid(x, "sum")
            if y is not None and self.is_(y, "exp"):
                return self.node("logsumexp", self.kids[y])
        if name == "log1p" and self.is_(x, "exp"):
            return self.node("softplus", self.kids[x])
        if name == "sqrt":
            y = self.kid(x, "reciprocal")
            if y is not None:
                return self.node("rsqrt", (y,))
            v = self._shifted(x)
            v = x if v is None else v
            if self.is_(v, "var"):  # sqrt(var(x) + eps) is std(x)
                return self.node("std", self.kids[v])
        if name in ("mean", "sum"):  # mean((a - b) ** 2) is the MSE, mean(|a - b|) the L1 loss
            square = self.kid(x, "square")
            centred = self._centred(square) if square is not None else None
            if centred is not None and name == "mean":  # mean((x - mean(x)) ** 2) is var(x)
                return self.node("var", (centred,))
            for inner, loss in (("square", "mse"), ("abs", "l1")):
                diff = self.kid(x, inner)
                pair = self._difference(diff) if diff is not None else None
                if pair is not None:
                    return self.node(loss if name == "mean" else f"{loss}:sum", pair)
        return self.node(name, (x,))

    def clamp(self, x: int | Const, low: Const | None, high: Const | None) -> int | Const:
        """``clamp(x, low, high)``: ReLU, ReLU6, hard-sigmoid or a clamp."""
        if type(x) is Const:
            return UNKNOWN
        lo = low.number() if low is not None else None
        hi = high.number() if high is not None else None
        if lo == 0 and high is None:
            return self.node("relu", (x,))
        if lo == 0 and hi == 6:
            return self.node("relu6", (x,))
        if lo == 0 and hi == 1:  # (x / 6 + 0.5).clamp(0, 1) is hard-sigmoid
            base = self._shifted(x)
            if base is not None:
                return self.node("hardsigmoid", (self._unscaled(base),))
        if lo == -1 and hi == 1:
            return self.node("hardtanh", (x,))
        if self.is_(x, "relu") and hi == 6 and low is None:
            return self.node("relu6", self.kids[x])
        label = "clamp" + (":min" if low is not None and high is None else ":max" if high is not None and low is None else "")
        return self.node(label, (x,))

    def extreme(self, name: str, a: int | Const, b: int | Const) -> int | Const:
        """Elementwise ``maximum``/``minimum`` of two operands (``max(x, 0)`` is ReLU)."""
        if type(a) is Const and type(b) is Const:
            return UNKNOWN
        if type(a) is Const:
            a, b = b, a
        if type(b) is Const:
            return self.clamp(a, b, None) if name == "maximum" else self.clamp(a, None, b)
        if name == "maximum":  # max(x, c * x) is leaky ReLU
            for p, q in ((a, b), (b, a)):
                if self.kid(q, "scale") == p:
                    return self.node("leakyrelu", (p,))
        return self.node(name, (a, b))

    def where(self, cond: int | Const, a: int | Const, b: int | Const) -> int | Const:
        """``where(x > 0, x, 0)`` is ReLU, ``where(x > 0, x, c * x)`` leaky ReLU."""
        if type(cond) is int and self.label[cond] in ("gt", "ge") and len(self.kids[cond]) == 2:
            x, zero = self.kids[cond]
            if self.label[zero] == "const" and a == x:
                if type(b) is Const and b.number() == 0:
                    return self.node("relu", (x,))
                if type(b) is int and self.kid(b, "scale") == x:
                    return self.node("leakyrelu", (x,))
        return self.node("where", tuple(self.operand(v) for v in (cond, a, b)))

    def compare(self, name: str, a: int | Const, b: int | Const) -> int | Const:
        if type(a) is Const and type(b) is Const:
            return UNKNOWN
        if type(a) is Const:  # 0 < x is x > 0
            a, b = b, a
            name = {"gt": "lt", "lt": "gt", "ge": "le", "le": "ge"}.get(name, name)
        if name == "eq" and type(b) is Const and b.number() == 0:  # mask == 0 is ~mask
            return self.node("not", (a,))
        return self.node(name, (self.operand(a), self.operand(b)))

    def call(self, label: str, operands: list[int | Const], instance: object = None) -> int | Const:
        """An operation of several operands (constants among them are not operands)."""
        kids = tuple(op for op in operands if type(op) is int)
        if not kids:
            return UNKNOWN
        if instance is not None:
            return self.node(label, kids, instance)
        if len(kids) == 1:
            return self.unary(label, kids[0])
        return self.node(label, kids)

    def _difference(self, node: int) -> tuple[int, int] | None:
        """``(a, b)`` when ``node`` is ``a - b``."""
        if self.is_(node, "add") and len(self.kids[node]) == 2:
            for i in (0, 1):
                b = self.kid(self.kids[node][i], "scale")
                if b is not None:
                    return self.kids[node][1 - i], b
        return None
