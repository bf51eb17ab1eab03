"""Counting what a PyTorch module file computes, for the static judge's difficulty
(:mod:`kernelbook_lib.static_judge`).

:func:`analyze_module` parses the file once (:func:`kernelbook_lib.module_parse.parse_code`) and
walks it once with an explicit stack, counting the operations it performs (named as in
:mod:`kernelbook_lib.module_vocabulary`) and its layers per unit, multiplied out through the units
that build one another (see its docstring for what counts). A file that does not parse is read
from its text. The code is never executed.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from kernelbook_lib.module_parse import (
    CHILD_FIELDS,
    INPUT_FUNCTIONS,
    ImportTable,
    _is_main_guard,
    _is_setup_func,
    chain,
    child_fields,
    children,
    parse_code,
)
from kernelbook_lib.module_vocabulary import LAYER_OPERATIONS, OPERATION_LEVELS

# Layer kinds counted for structure (index into the per-unit count vector).
_CONV, _LINEAR, _ATTN, _RNN, _TRANSFORMER, _NORM, _RESIDUAL = range(7)
_N_KINDS = 7
_KIND: dict[str, int] = {
    **{n: _CONV for n in ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                           "conv_transpose3d")},
    "linear": _LINEAR, "bilinear": _LINEAR,
    "multihead_attention": _ATTN, "scaled_dot_product_attention": _ATTN,
    **{n: _RNN for n in ("rnn", "lstm", "gru", "rnn_cell", "lstm_cell", "gru_cell")},
    # nn.Transformer(Encoder|Decoder) stack several layers: counted as two
    **{n: _TRANSFORMER for n in ("transformer", "transformer_encoder", "transformer_decoder",
                                  "transformer_encoder_layer", "transformer_decoder_layer")},
    "layer_norm": _NORM, "rms_norm": _NORM,
}
_STACKED = frozenset(("transformer", "transformer_encoder", "transformer_decoder"))
_MATMUL_LIKE = frozenset(("matmul", "mm", "bmm", "baddbmm", "einsum", "addbmm", "tensordot"))
_SOFTMAX_LIKE = frozenset(("softmax", "log_softmax", "softmin"))

# Tensor methods recognised on arbitrary receivers (``x.sum(1)``); anything else (``.size()``,
# ``.append()``, ``.items()``) is not an operation.
_METHODS: frozenset[str] = frozenset(
    "view reshape clone contiguous flatten unflatten squeeze unsqueeze detach to type float half "
    "double int long bool cpu cuda expand expand_as view_as reshape_as type_as permute transpose "
    "t repeat repeat_interleave flip roll narrow select index_select gather scatter scatter_add "
    "chunk split unbind masked_fill masked_select relu sigmoid tanh exp log log1p sqrt rsqrt abs "
    "neg reciprocal pow square sin cos floor ceil round sign clamp clip clamp_min clamp_max add "
    "sub mul div maximum minimum where lerp erf softmax log_softmax sum mean max min amax amin "
    "argmax argmin prod norm std var all any cumsum cumprod logsumexp matmul mm bmm topk sort "
    "argsort addmm baddbmm copy_ fill_ zero_ new_zeros new_ones new_empty new_full tril triu "
    "diag diagonal eq ne lt le gt ge fmod remainder addcmul addcdiv exp2 expm1 sigmoid_ "
    "nan_to_num".split()
)

_SKIP_NAMESPACES = frozenset(("init", "utils", "jit", "cuda", "backends", "distributed",
                              "autograd", "testing", "hub", "onnx"))
_BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div",
           ast.FloorDiv: "floor_divide", ast.Mod: "remainder", ast.Pow: "pow",
           ast.MatMult: "matmul", ast.BitAnd: "bitwise_and", ast.BitOr: "bitwise_or",
           ast.BitXor: "bitwise_xor", ast.LShift: "bitwise_and", ast.RShift: "bitwise_and"}
_CONTAINER_NODES = frozenset((ast.List, ast.Tuple, ast.Dict, ast.Set, ast.ListComp, ast.JoinedStr))
_SCALAR_METHODS = frozenset(("size", "dim", "numel", "item", "__len__", "nelement", "stride"))
_SCALAR_CALLS = frozenset(("len", "int", "float", "math", "range", "max", "min"))
_RESIDUAL_EXACT = frozenset(("res", "inp", "input", "orig", "x_in", "x0", "h0"))
_RESIDUAL_PREFIXES = ("residual", "identity", "shortcut", "skip")
# Operations whose arguments are shapes, sizes or dims: their arguments are not walked, so
# ``x.view(b, c * h * w)`` is a view, not a view plus two multiplications.
_SHAPE_ARG_OPS = frozenset(
    "view reshape expand repeat permute transpose tile unflatten narrow flatten squeeze unsqueeze "
    "split chunk zeros ones empty full rand randn randint arange linspace new_zeros new_ones "
    "new_empty new_full movedim select roll flip eye".split()
)
_MULT_CAP = 64
_COUNT_CAP = 10_000

_TEXT_CALL_RE = re.compile(r"(\.)?\b([A-Za-z_][A-Za-z0-9_]*)\s*\(")

#: The parse error recorded for an empty or blank module.
EMPTY_MODULE = "empty module code"


# --- counting what a module computes (the static judge's difficulty) --------------------------


@dataclass(frozen=True, slots=True)
class ModuleFeatures:
    """What a PyTorch reference module does, from its AST (or its text when it does not parse).

    ``ops`` are ``(canonical operation, occurrences)`` sorted by name. The layer counts are
    effective counts in the largest top-level unit ``root`` (constructions of sub-blocks and
    loops multiplied out), each capped at 10,000.
    """

    parsed: bool
    parse_error: str  # "" when it parsed
    ops: tuple[tuple[str, int], ...]
    keepdim: bool  # a reduction keeps dims for broadcasting
    classes: int
    units: int  # classes + module-level functions analysed
    root: str  # "" when there is no unit
    conv_layers: int
    linear_layers: int
    attention_layers: int
    recurrent_layers: int
    transformer_layers: int
    norm_layers: int  # layer / RMS norms
    residual_blocks: int


class _Unit:
    """Per-unit accumulator during the walk."""

    __slots__ = ("counts", "residual", "matmul", "softmax", "calls")

    def __init__(self) -> None:
        self.counts = [0] * _N_KINDS
        self.residual = False
        self.matmul = False
        self.softmax = False
        self.calls: list[tuple[str, int]] = []  # (called name, multiplicity)


def _is_dim_like(node: ast.expr) -> bool:
    """An argument that names a dimension (a literal int, or a name mentioning dim/axis)."""
    if type(node) is ast.Constant:
        return isinstance(node.value, int)
    if type(node) is ast.UnaryOp and type(node.operand) is ast.Constant:
        return True
    if type(node) is ast.Name:
        return "dim" in node.id or "axis" in node.id
    if type(node) is ast.Attribute:
        return "dim" in node.attr or "axis" in node.attr
    return type(node) is ast.Tuple


def _is_scalar_like(node: ast.expr) -> bool:
    """Operands that are configuration or shape arithmetic, not tensors."""
    t = type(node)
    if t is ast.Constant:
        return True
    if t is ast.UnaryOp:
        return type(node.operand) is ast.Constant
    if t is ast.Attribute:
        # self.scale, x.shape, self.config.dim
        return type(node.value) is ast.Name and node.value.id == "self" or node.attr in ("shape", "ndim")
    if t is ast.Subscript:
        value = node.value
        return type(value) is ast.Attribute and value.attr == "shape"
    if t is ast.Call:
        func = node.func
        if type(func) is ast.Attribute:
            return func.attr in _SCALAR_METHODS or (type(func.value) is ast.Name and func.value.id == "math")
        if type(func) is ast.Name:
            return func.id in _SCALAR_CALLS
    return False


def _loop_mult(iterable: ast.expr) -> int:
    """How many times a loop over ``iterable`` runs, when that is a literal; otherwise 2."""
    if type(iterable) is ast.Call and type(iterable.func) is ast.Name and iterable.func.id == "range":
        args = iterable.args
        values = [a.value for a in args if type(a) is ast.Constant and type(a.value) is int]
        if len(values) == len(args) and 1 <= len(args) <= 3:
            start, stop = (0, values[0]) if len(values) == 1 else (values[0], values[1])
            step = values[2] if len(values) == 3 and values[2] else 1
            try:
                return max(1, min(_MULT_CAP, len(range(start, stop, step))))
            except OverflowError:  # range(10**40) written out as a literal
                return _MULT_CAP
        return 2
    if type(iterable) in (ast.List, ast.Tuple):
        return max(1, min(_MULT_CAP, len(iterable.elts)))
    if (
        type(iterable) is ast.Call
        and type(iterable.func) is ast.Name
        and iterable.func.id in ("enumerate", "reversed")
        and iterable.args
    ):
        return _loop_mult(iterable.args[0])
    return 2


def _control_operands(test: ast.expr) -> list[ast.expr]:
    """The operands of comparisons in a control-flow test (through ``and``/``or``/``not``)."""
    if type(test) is ast.BoolOp:
        values = test.values
    elif type(test) is ast.UnaryOp and type(test.op) is ast.Not:
        values = [test.operand]
    else:
        values = [test]
    operands: list[ast.expr] = []
    for value in values:
        if type(value) is ast.Compare:
            operands.append(value.left)
            operands.extend(value.comparators)
        else:
            operands.append(value)
    return operands


class _ModuleWalker:
    """One explicit-stack walk over a module's AST."""

    def __init__(self, tree: ast.Module) -> None:
        self.ops: dict[str, int] = {}
        self.keepdim = False
        self.units: dict[str, _Unit] = {}
        self.classes = 0
        self.imports = ImportTable()
        self.torch_roots = self.imports.torch_roots  # the table's sets, read in the hot loop
        self.imported = self.imports.torch_names
        self.unit_names: set[str] = set()
        # Pre-pass over the top-level statements only (not a walk): imports and unit names,
        # so that resolution never depends on definition order. Imports nested in code are
        # recorded when the walk reaches them.
        for stmt in tree.body:
            t = type(stmt)
            if t is ast.Import or t is ast.ImportFrom:
                self.imports.add(stmt)
            elif t is ast.ClassDef or t is ast.FunctionDef or t is ast.AsyncFunctionDef:
                if stmt.name not in INPUT_FUNCTIONS:
                    self.unit_names.add(stmt.name)
                    self._unit(stmt.name)  # units in definition order
        self._walk(tree)

    # -- the walk

    def _unit(self, name: str) -> _Unit:
        unit = self.units.get(name)
        if unit is None:
            unit = self.units[name] = _Unit()
        return unit

    def _walk(self, tree: ast.Module) -> None:
        # Stack items: (node, unit name, compute?, parameter names, loop multiplicity).
        # ``compute`` is False in set-up code, where only layer constructions count.
        module_unit = "<module>"
        stack: list[tuple[ast.AST, str, bool, frozenset[str], int]] = [
            (stmt, module_unit, False, frozenset(), 1) for stmt in reversed(tree.body)
        ]
        push = stack.append
        while stack:
            node, unit, compute, params, mult = stack.pop()
            t = type(node)
            if t is ast.Name or t is ast.Constant:  # the most common nodes: leaves, nothing to do
                continue
            if t is ast.Call:
                if self._call(node, unit, compute, mult) in _SHAPE_ARG_OPS:
                    push((node.func, unit, compute, params, mult))  # the receiver only
                    continue
            elif t is ast.Subscript:
                push((node.value, unit, compute, params, mult))  # slices are index arithmetic
                continue
            elif t is ast.BinOp:
                if compute:
                    self._binop(node.op, node.left, node.right, unit, params, mult)
            elif t is ast.AugAssign:
                if compute:
                    self._binop(node.op, node.target, node.value, unit, params, mult)
            elif t is ast.Compare:
                if compute and not _is_scalar_like(node.left) and not any(
                    type(op) in (ast.Is, ast.IsNot, ast.In, ast.NotIn) for op in node.ops
                ):
                    self._op("compare", unit, mult)
            elif t is ast.UnaryOp:
                if compute and type(node.op) is ast.USub and not _is_scalar_like(node.operand):
                    self._op("neg", unit, mult)
            elif t is ast.ClassDef:
                self.classes += 1
                record = self._unit(node.name)
                for base in node.bases:  # a subclass of a block has that block's layers
                    if type(base) is ast.Name and base.id in self.unit_names and base.id != node.name:
                        record.calls.append((base.id, 1))
                for stmt in reversed(node.body):
                    push((stmt, node.name, False, frozenset(), mult))
                continue
            elif t is ast.FunctionDef or t is ast.AsyncFunctionDef:
                name = node.name
                if unit == module_unit:
                    if name in INPUT_FUNCTIONS:
                        continue
                    unit = name
                    self._unit(name)
                args = node.args
                params = frozenset(
                    a.arg
                    for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)
                    if a.arg not in ("self", "cls")
                )
                compute = not _is_setup_func(name)
                for stmt in reversed(node.body):
                    push((stmt, unit, compute, params, mult))
                continue
            elif t is ast.If or t is ast.While or t is ast.IfExp or t is ast.Assert:
                if t is ast.If and unit == module_unit and _is_main_guard(node):
                    continue
                # A comparison that steers control flow (``if v == 'M'``) is not a tensor op:
                # walk its operands, not the comparison itself.
                for operand in _control_operands(node.test):
                    push((operand, unit, compute, params, mult))
                if t is ast.Assert:
                    if node.msg is not None:
                        push((node.msg, unit, compute, params, mult))
                elif t is ast.IfExp:
                    push((node.body, unit, compute, params, mult))
                    push((node.orelse, unit, compute, params, mult))
                else:
                    inner = min(_MULT_CAP, mult * 2) if t is ast.While else mult
                    for stmt in node.body:
                        push((stmt, unit, compute, params, inner))
                    for stmt in node.orelse:
                        push((stmt, unit, compute, params, mult))
                continue
            elif t is ast.For or t is ast.AsyncFor:
                inner = min(_MULT_CAP, mult * _loop_mult(node.iter))
                push((node.iter, unit, compute, params, mult))
                for stmt in node.body:
                    push((stmt, unit, compute, params, inner))
                for stmt in node.orelse:
                    push((stmt, unit, compute, params, mult))
                continue
            elif t is ast.ListComp or t is ast.GeneratorExp or t is ast.SetComp or t is ast.DictComp:
                inner = min(_MULT_CAP, mult * _loop_mult(node.generators[0].iter))
                for gen in node.generators:
                    push((gen, unit, compute, params, mult))
                if t is ast.DictComp:
                    push((node.key, unit, compute, params, inner))
                    push((node.value, unit, compute, params, inner))
                else:
                    push((node.elt, unit, compute, params, inner))
                continue
            elif t is ast.Import or t is ast.ImportFrom:
                self.imports.add(node)
                continue
            elif t is ast.Lambda:
                compute = True
            fields = CHILD_FIELDS.get(t) or child_fields(t)
            if fields:
                for child in children(node, fields):
                    push((child, unit, compute, params, mult))

    def _op(self, name: str, unit: str, mult: int) -> None:
        self.ops[name] = min(_COUNT_CAP, self.ops.get(name, 0) + mult)
        record = self._unit(unit)
        kind = _KIND.get(name)
        if kind is not None:
            record.counts[kind] += mult * (2 if name in _STACKED else 1)
        if name in _MATMUL_LIKE:
            record.matmul = True
        elif name in _SOFTMAX_LIKE:
            record.softmax = True

    def _binop(self, op: ast.operator, left: ast.expr, right: ast.expr, unit: str,
               params: frozenset[str], mult: int) -> None:
        if type(left) in _CONTAINER_NODES or type(right) in _CONTAINER_NODES:
            return  # list/tuple concatenation or repetition, string formatting
        if _is_scalar_like(left) and _is_scalar_like(right):
            return
        name = _BINOPS.get(type(op))
        if name is None:
            return
        self._op(name, unit, mult)
        if name == "add" and self._is_residual(left, right, params):
            self._unit(unit).residual = True

    @staticmethod
    def _is_residual(left: ast.expr, right: ast.expr, params: frozenset[str]) -> bool:
        """``x + f(x)``, ``out += identity``: an input (a parameter, or a name like identity /
        residual / shortcut) added to another tensor expression."""
        for a, b in ((left, right), (right, left)):
            if type(a) is not ast.Name:
                continue
            name = a.id
            if "mask" in name or "bias" in name:
                continue
            if not (name in params or name in _RESIDUAL_EXACT or name.startswith(_RESIDUAL_PREFIXES)):
                continue
            tb = type(b)
            if tb in (ast.Call, ast.BinOp, ast.Subscript) or (tb is ast.Name and b.id != a.id):
                return True
        return False

    def _call(self, node: ast.Call, unit: str, compute: bool, mult: int) -> str | None:
        """Record what a call does; returns the canonical operation name, if any."""
        func = node.func
        tf = type(func)
        if tf is ast.Name:
            name = func.id
            if name in self.unit_names:
                self._unit(unit).calls.append((name, mult))
                return None
            target = self.imported.get(name)
            if target is None and name in LAYER_OPERATIONS:
                target = name
            if target is None:
                return None
            return self._resolve(target, node, unit, compute, mult, method=False)
        elif tf is ast.Attribute:
            root, parts = chain(func)
            method = func.attr[:-1] if func.attr.endswith("_") and func.attr not in _METHODS else func.attr
            if root is None:
                if compute and method in _METHODS:
                    return self._resolve(method, node, unit, compute, mult, method=True)
                return None
            if root in self.torch_roots:
                if any(part in _SKIP_NAMESPACES for part in parts[:-1]):
                    return None
                return self._resolve(func.attr, node, unit, compute, mult, method=False)
            if root == "self" and len(parts) == 1:
                return None  # a submodule or helper method of this class
            if compute and method in _METHODS:  # x.sum(1), x.div_(2)
                return self._resolve(method, node, unit, compute, mult, method=True)
        return None

    def _resolve(self, name: str, node: ast.Call, unit: str, compute: bool, mult: int,
                 method: bool) -> str | None:
        """Record the operation called ``name`` (a torch function, layer class or method)."""
        layer = LAYER_OPERATIONS.get(name)
        if layer is not None:  # layer constructions count everywhere
            self._op(layer, unit, mult)
            return layer
        if not compute:
            return None
        if name not in OPERATION_LEVELS and name.endswith("_") and name[:-1] in OPERATION_LEVELS:
            name = name[:-1]  # in-place variant
        if name not in OPERATION_LEVELS:
            return None
        if method and name == "unfold":
            name = "unfold_view"  # Tensor.unfold is a strided view, F.unfold is im2col
        if name in ("max", "min"):
            # torch.max(a, b) / a.max(b) are elementwise; torch.max(x, 1) / x.max(dim=1) reduce
            args = node.args if method else node.args[1:]
            if args and not _is_dim_like(args[0]) and not any(k.arg == "dim" for k in node.keywords):
                name = "maximum" if name == "max" else "minimum"
        for keyword in node.keywords:
            value = keyword.value
            if keyword.arg == "keepdim" and type(value) is ast.Constant and value.value is True:
                self.keepdim = True
        self._op(name, unit, mult)
        return name


def _effective_counts(units: dict[str, _Unit]) -> tuple[str, list[int]]:
    """The largest top-level unit and its layer counts with sub-units multiplied out.

    Iterative post-order over the unit graph; an edge that closes a cycle counts as nothing.
    """
    edges: dict[str, list[tuple[str, int]]] = {
        name: [(callee, m) for callee, m in unit.calls if callee in units and callee != name]
        for name, unit in units.items()
    }
    memo: dict[str, list[int]] = {}
    heavy: dict[str, bool] = {}
    on_path: set[str] = set()
    for start in units:
        stack: list[tuple[str, bool]] = [(start, False)]
        while stack:
            name, expanded = stack.pop()
            if name in memo:
                continue
            if not expanded:
                if name in on_path:
                    continue
                on_path.add(name)
                stack.append((name, True))
                for callee, _ in edges[name]:
                    if callee not in memo and callee not in on_path:
                        stack.append((callee, False))
                continue
            unit = units[name]
            total = list(unit.counts)
            has_heavy = any(total[k] for k in (_CONV, _LINEAR, _ATTN, _RNN, _TRANSFORMER))
            for callee, m in edges[name]:
                sub = memo.get(callee)
                if sub is None:
                    continue
                has_heavy = has_heavy or heavy[callee]
                for k in range(_N_KINDS):
                    total[k] = min(_COUNT_CAP, total[k] + m * sub[k])
            if unit.residual and has_heavy:
                total[_RESIDUAL] = min(_COUNT_CAP, total[_RESIDUAL] + 1)
            memo[name] = total
            heavy[name] = has_heavy
            on_path.discard(name)

    called = {callee for calls in edges.values() for callee, _ in calls}
    roots = [name for name in units if name not in called] or list(units)

    def weight(name: str) -> int:
        c = memo[name]
        return 2 * c[_CONV] + c[_LINEAR] + 2 * c[_ATTN] + 2 * c[_RNN] + 4 * c[_TRANSFORMER] + c[_NORM]

    # max() keeps the first of equal weights; roots are in definition order
    best = max(roots, key=weight)
    return best, memo[best]


def analyze_module(python_code: str) -> ModuleFeatures:
    """The features of a PyTorch reference module. One parse, one walk; never raises.

    Counted: ``torch.*`` / ``F.*`` calls, ``nn.*`` layers built anywhere, tensor methods
    (``x.sum(1)``) and the operators ``+ - * / ** @`` and comparisons in compute code. In set-up
    methods only layer constructions count; ``get_inputs``, ``get_init_inputs`` and ``if __name__
    == "__main__"`` blocks are ignored; arguments that are shapes (``x.view(b, c * h)``), slices
    and the comparisons that steer control flow are not operations. Loops multiply what they
    contain (a literal trip count, else 2; capped at 64). The scoring of these features is
    :func:`kernelbook_lib.static_judge.difficulty_of`."""
    if not isinstance(python_code, str) or not python_code.strip():
        return _textual_features("", EMPTY_MODULE)
    tree, error = parse_code(python_code)
    if tree is None:
        return _textual_features(python_code, error)
    walker = _ModuleWalker(tree)
    # A unit doing a matmul-like op and a softmax is an attention block.
    for unit in walker.units.values():
        if unit.matmul and unit.softmax:
            unit.counts[_ATTN] += 1
            walker.ops["attention"] = walker.ops.get("attention", 0) + 1
    # Units that do nothing (e.g. the module-level statements) are not roots worth reporting.
    units = {name: u for name, u in walker.units.items() if name != "<module>" or any(u.counts) or u.calls}
    root, counts = _effective_counts(units) if units else ("", [0] * _N_KINDS)
    return ModuleFeatures(
        parsed=True,
        parse_error="",
        ops=tuple(sorted(walker.ops.items())),
        keepdim=walker.keepdim,
        classes=walker.classes,
        units=sum(1 for name in walker.units if name != "<module>"),
        root=root,
        conv_layers=counts[_CONV],
        linear_layers=counts[_LINEAR],
        attention_layers=counts[_ATTN],
        recurrent_layers=counts[_RNN],
        transformer_layers=counts[_TRANSFORMER],
        norm_layers=counts[_NORM],
        residual_blocks=counts[_RESIDUAL],
    )


def _textual_features(code: str, error: str) -> ModuleFeatures:
    """Features of a module that does not parse: the calls still recognisable in its text."""
    ops: dict[str, int] = {}
    if code:
        for dot, name in _TEXT_CALL_RE.findall(code):
            op = LAYER_OPERATIONS.get(name)
            if op is None and dot and name in OPERATION_LEVELS:
                op = name
            if op is not None:
                ops[op] = min(_COUNT_CAP, ops.get(op, 0) + 1)
    counts = [0] * _N_KINDS
    for op, n in ops.items():
        kind = _KIND.get(op)
        if kind is not None:
            counts[kind] += n * (2 if op in _STACKED else 1)
    return ModuleFeatures(
        parsed=False,
        parse_error=error,
        ops=tuple(sorted(ops.items())),
        keepdim=False,
        classes=0,
        units=0,
        root="",
        conv_layers=counts[_CONV],
        linear_layers=counts[_LINEAR],
        attention_layers=counts[_ATTN],
        recurrent_layers=counts[_RNN],
        transformer_layers=counts[_TRANSFORMER],
        norm_layers=counts[_NORM],
        residual_blocks=0,
    )
