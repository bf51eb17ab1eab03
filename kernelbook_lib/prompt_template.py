"""The offline prompt generator (``template-ast-v1``): a task specification built from the
syntax tree of a PyTorch module, deterministically, without a model.

The module's source is only *parsed* (``ast``), never executed or imported: the class, its
``__init__`` parameters and ``forward`` signature, the input shapes of ``get_inputs()`` and the
construction arguments of ``get_init_inputs()`` when they are written as literals (read with
``ast.literal_eval``, which evaluates literals only), the operations ``forward`` uses, and the
learnable parameters ``__init__`` creates. Whatever cannot be read from the source is said to
be unknown, never guessed.

The same source always gives the same text (no sets are iterated, nothing depends on time,
hashes or the environment), so ``template-ast-v1`` identifies the exact output; change
:data:`TEMPLATE_GENERATOR` whenever the text this module writes changes.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

#: The label of this generator (the ``generator`` column of its rows and of the summary).
TEMPLATE_GENERATOR = "template-ast-v1"

#: How deep the learnable-parameter analysis follows helper classes defined in the same file.
_MAX_DEPTH = 4


class ModuleNotUsable(ValueError):
    """The source cannot describe the module: it does not parse, or lacks the class."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # a ledger reason: unparseable_python_code / module_class_not_found


REASON_UNPARSEABLE = "unparseable_python_code"
REASON_CLASS_NOT_FOUND = "module_class_not_found"


def parse_module(python_code: str) -> ast.Module:
    """``ast.parse`` with every way it can fail turned into :class:`ModuleNotUsable`."""
    try:
        return ast.parse(python_code)
    except SyntaxError as exc:
        raise ModuleNotUsable(REASON_UNPARSEABLE, f"SyntaxError: {exc.msg} (line {exc.lineno})") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, absurd nesting
        raise ModuleNotUsable(REASON_UNPARSEABLE, f"{type(exc).__name__}: {str(exc)[:120]}") from None


def find_class(tree: ast.Module, name: str) -> ast.ClassDef:
    """The class ``name``: the top-level one if there is one, else the first nested one."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise ModuleNotUsable(REASON_CLASS_NOT_FOUND, f"the code defines no class named {name!r}")


def check_module(python_code: str, module_name: str) -> None:
    """Raise :class:`ModuleNotUsable` unless the code parses and defines ``module_name``."""
    find_class(parse_module(python_code), module_name)


# --- facts read from the tree ------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    default: str | None = None  # source text of the default
    kind: str = "positional"  # positional, keyword-only, *args, **kwargs
    annotation: str | None = None

    def signature_text(self) -> str:
        prefix = {"*args": "*", "**kwargs": "**"}.get(self.kind, "")
        text = prefix + self.name
        if self.annotation:
            text += f": {self.annotation}"
        if self.default is not None:
            text += f"={self.default}"
        return text


@dataclass(frozen=True)
class InputFact:
    """One element of ``get_inputs()``: a tensor (shape/dtype/values) or a plain literal."""

    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    values: str | None = None  # how the values are drawn
    literal: str | None = None  # a non-tensor literal argument
    unknown: bool = False


@dataclass(frozen=True)
class Holding:
    """Something ``__init__`` stores on ``self`` that may hold learnable parameters."""

    attribute: str
    what: str  # e.g. "nn.Linear", "nn.Parameter of shape (features), initialised to ones"
    learnable: bool | None  # None: cannot be told from the source


@dataclass
class ModuleFacts:
    class_name: str
    summary: str | None
    init_params: list[Param]
    forward_params: list[Param]
    inputs: list[InputFact] | None  # None: get_inputs() missing or not a literal list
    init_args: tuple[list[Any], dict[str, Any]] | None  # get_init_inputs() when literal
    operations: list[tuple[str, str]]  # (display name, gloss), in order of first use
    operators: list[str]
    tensor_methods: list[str]
    layers_used: list[tuple[str, str]]  # (self.attr, type) called in forward
    helper_classes: list[str]
    holdings: list[Holding]
    returns_tuple: int | None
    inplace: list[str] = field(default_factory=list)


def _import_aliases(nodes: list[ast.AST]) -> dict[str, str]:
    """Local names bound by imports (among ``nodes``), mapped to the dotted name they stand for."""
    aliases: dict[str, str] = {}
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    aliases.setdefault(top, top)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if alias.name != "*":
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attribute accesses on a name, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _resolve(dotted: str, aliases: dict[str, str]) -> str:
    head, _, rest = dotted.partition(".")
    base = aliases.get(head, head)
    return f"{base}.{rest}" if rest else base


def _display(resolved: str) -> str:
    """Short, conventional spelling: ``torch.nn.functional.x`` -> ``F.x``, ``torch.nn.X`` -> ``nn.X``."""
    if resolved.startswith("torch.nn.functional."):
        return "F." + resolved[len("torch.nn.functional."):]
    if resolved.startswith("torch.nn."):
        return "nn." + resolved[len("torch.nn."):]
    return resolved


def _params(args: ast.arguments, skip_self: bool = True) -> list[Param]:
    positional = list(args.posonlyargs) + list(args.args)
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    out: list[Param] = []
    for arg, default in zip(positional, defaults):
        out.append(Param(arg.arg, ast.unparse(default) if default is not None else None, "positional",
                         ast.unparse(arg.annotation) if arg.annotation is not None else None))
    if args.vararg is not None:
        out.append(Param(args.vararg.arg, None, "*args"))
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        out.append(Param(arg.arg, ast.unparse(default) if default is not None else None, "keyword-only",
                         ast.unparse(arg.annotation) if arg.annotation is not None else None))
    if args.kwarg is not None:
        out.append(Param(args.kwarg.arg, None, "**kwargs"))
    if skip_self and out and out[0].kind == "positional":
        out = out[1:]
    return out


def _methods(cls: ast.ClassDef) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    return {n.name: n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _function(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    return None


def _returned(fn: ast.FunctionDef | None) -> ast.expr | None:
    """The value of the function's single top-level ``return`` (None when absent or several)."""
    if fn is None:
        return None
    returns = [n for n in fn.body if isinstance(n, ast.Return)]
    return returns[0].value if len(returns) == 1 else None


# --- get_inputs() / get_init_inputs() ----------------------------------------------------------

_FACTORIES = {
    "torch.rand": "uniform in [0, 1)",
    "torch.randn": "standard normal",
    "torch.ones": "all ones",
    "torch.zeros": "all zeros",
    "torch.empty": "uninitialised",
}
_DTYPE_NAMES = {"float": "float32", "double": "float64", "half": "float16", "long": "int64", "int": "int32",
                "bool": "bool", "float32": "float32", "float64": "float64", "float16": "float16",
                "bfloat16": "bfloat16", "int64": "int64", "int32": "int32", "int8": "int8", "uint8": "uint8",
                "int16": "int16", "complex64": "complex64"}


def _literal(node: ast.AST) -> Any:
    """``ast.literal_eval`` of a node (literals only; nothing is executed). Raises ValueError."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


def _shape(args: list[ast.expr], keywords: dict[str, ast.expr]) -> tuple[int, ...] | None:
    """A literal shape from ``f([2, 3])``, ``f((2, 3))``, ``f(2, 3)`` or ``f(size=[2, 3])``."""
    try:
        if "size" in keywords:
            value = _literal(keywords["size"])
        elif len(args) == 1:
            value = _literal(args[0])
        else:
            value = tuple(_literal(a) for a in args)
    except ValueError:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return tuple(value)
    return None


def _dtype(keywords: dict[str, ast.expr], aliases: dict[str, str], default: str) -> str | None:
    node = keywords.get("dtype")
    if node is None:
        return default
    dotted = _dotted(node)
    if dotted is None:
        return None
    resolved = _resolve(dotted, aliases)
    return _DTYPE_NAMES.get(resolved.rsplit(".", 1)[-1]) if resolved.startswith("torch.") else None


def _input_fact(node: ast.expr, aliases: dict[str, str]) -> InputFact:
    if isinstance(node, ast.Call):
        dotted = _dotted(node.func)
        name = _resolve(dotted, aliases) if dotted else ""
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if name in _FACTORIES:
            shape = _shape(list(node.args), keywords)
            if shape is None:
                return InputFact(unknown=True)
            return InputFact(shape=shape, dtype=_dtype(keywords, aliases, "float32"), values=_FACTORIES[name])
        if name == "torch.randint":
            args = list(node.args)
            try:
                if len(args) == 3:
                    low, high, size = _literal(args[0]), _literal(args[1]), args[2]
                elif len(args) == 2:
                    low, high, size = 0, _literal(args[0]), args[1]
                else:
                    return InputFact(unknown=True)
            except ValueError:
                return InputFact(unknown=True)
            shape = _shape([size], {})
            if shape is None or not isinstance(low, int) or not isinstance(high, int):
                return InputFact(unknown=True)
            return InputFact(shape=shape, dtype=_dtype(keywords, aliases, "int64"), values=f"integers in [{low}, {high})")
        if name == "torch.full" and len(node.args) >= 2:
            shape = _shape([node.args[0]], {})
            try:
                fill = _literal(node.args[1])
            except ValueError:
                return InputFact(unknown=True)
            if shape is None or not isinstance(fill, (int, float, bool)):
                return InputFact(unknown=True)
            default = "bool" if isinstance(fill, bool) else "int64" if isinstance(fill, int) else "float32"
            return InputFact(shape=shape, dtype=_dtype(keywords, aliases, default), values=f"all equal to {fill!r}")
        return InputFact(unknown=True)
    try:
        value = _literal(node)
    except ValueError:
        return InputFact(unknown=True)
    return InputFact(literal=repr(value))


def _inputs(tree: ast.Module, aliases: dict[str, str]) -> list[InputFact] | None:
    value = _returned(_function(tree, "get_inputs"))
    if not isinstance(value, (ast.List, ast.Tuple)):
        return None
    return [_input_fact(element, aliases) for element in value.elts]


def _init_args(tree: ast.Module) -> tuple[list[Any], dict[str, Any]] | None:
    """``get_init_inputs()`` as ``(args, kwargs)`` when it returns ``[[...], {...}]`` literally."""
    value = _returned(_function(tree, "get_init_inputs"))
    if value is None:
        return None
    try:
        literal = _literal(value)
    except ValueError:
        return None
    if (isinstance(literal, (list, tuple)) and len(literal) == 2 and isinstance(literal[0], (list, tuple))
            and isinstance(literal[1], dict) and all(isinstance(k, str) for k in literal[1])):
        return list(literal[0]), dict(literal[1])
    return None


# --- operations used by forward ----------------------------------------------------------------

#: Short explanations of common operations (by their last name component).
_GLOSS = {
    "matmul": "matrix product", "mm": "matrix product", "bmm": "batched matrix product",
    "einsum": "Einstein summation", "linear": "affine map x W^T + b", "conv1d": "1-D convolution",
    "conv2d": "2-D convolution", "conv3d": "3-D convolution", "conv_transpose2d": "2-D transposed convolution",
    "softmax": "softmax", "log_softmax": "log-softmax", "relu": "ReLU", "relu6": "ReLU6", "gelu": "GELU",
    "silu": "SiLU", "sigmoid": "logistic sigmoid", "tanh": "hyperbolic tangent", "elu": "ELU",
    "leaky_relu": "leaky ReLU", "softplus": "softplus", "hardsigmoid": "hard sigmoid", "hardswish": "hard swish",
    "exp": "exponential", "log": "natural logarithm", "sqrt": "square root", "rsqrt": "reciprocal square root",
    "abs": "absolute value", "pow": "power", "clamp": "clamping", "sum": "sum reduction", "mean": "mean reduction",
    "max": "maximum", "min": "minimum", "amax": "maximum reduction", "amin": "minimum reduction",
    "prod": "product reduction", "std": "standard deviation", "var": "variance", "norm": "vector norm",
    "normalize": "Lp normalisation", "layer_norm": "layer normalisation", "batch_norm": "batch normalisation",
    "group_norm": "group normalisation", "instance_norm": "instance normalisation", "dropout": "dropout",
    "max_pool2d": "2-D max pooling", "avg_pool2d": "2-D average pooling", "adaptive_avg_pool2d": "adaptive average pooling",
    "interpolate": "interpolation (resampling)", "cat": "concatenation", "stack": "stacking", "where": "elementwise selection",
    "cross_entropy": "cross-entropy loss", "mse_loss": "mean squared error", "l1_loss": "L1 loss",
    "cosine_similarity": "cosine similarity", "pad": "padding", "embedding": "embedding lookup",
    "scaled_dot_product_attention": "scaled dot-product attention", "mul": "multiplication", "add": "addition",
    "sub": "subtraction", "div": "division", "neg": "negation", "maximum": "elementwise maximum",
    "minimum": "elementwise minimum", "cumsum": "cumulative sum", "topk": "top-k selection",
    "sort": "sorting", "argmax": "index of the maximum", "argmin": "index of the minimum",
}
_OPERATORS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%",
              ast.Pow: "**", ast.MatMult: "@", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^",
              ast.LShift: "<<", ast.RShift: ">>"}
_COMPARES = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}
#: Calls that are Python built-ins or bookkeeping, not computations worth listing.
_IGNORED_CALLS = {"super", "len", "range", "int", "float", "isinstance", "print", "list", "tuple", "zip",
                  "enumerate", "getattr", "hasattr", "setattr", "type", "dict", "str", "bool", "min", "max",
                  "abs", "sum", "round", "map", "sorted", "reversed", "any", "all"}


class _OperationCollector(ast.NodeVisitor):
    """Operations of one or more functions, in source order of first use."""

    def __init__(self, aliases: dict[str, str], layers: dict[str, str], local_classes: set[str],
                 local_functions: set[str]) -> None:
        self.aliases = aliases
        self.layers = layers  # self.attr -> layer type (from __init__)
        self.local_classes = local_classes
        self.local_functions = local_functions
        self.operations: dict[str, str] = {}
        self.operators: dict[str, None] = {}
        self.methods: dict[str, None] = {}
        self.layers_used: dict[str, str] = {}
        self.self_methods: dict[str, None] = {}

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        dotted = _dotted(func)
        if dotted is not None and dotted.startswith("self.") and dotted.count(".") == 1:
            attr = dotted.split(".", 1)[1]
            if attr in self.layers:
                self.layers_used.setdefault(f"self.{attr}", self.layers[attr])
            else:
                self.self_methods[attr] = None
        elif dotted is not None and "." not in dotted and dotted not in self.aliases:
            if dotted not in _IGNORED_CALLS and dotted not in self.local_classes and dotted not in self.local_functions:
                self.operations.setdefault(dotted, _GLOSS.get(dotted, ""))
        elif dotted is not None and dotted.split(".")[0] in self.aliases:
            resolved = _resolve(dotted, self.aliases)
            self.operations.setdefault(_display(resolved), _GLOSS.get(resolved.rsplit(".", 1)[-1], ""))
        elif isinstance(func, ast.Attribute):
            # A method of a tensor (or of another value): ``x.softmax(dim=-1)``, ``x.view(...)``.
            self.methods[func.attr] = None
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        symbol = _OPERATORS.get(type(node.op))
        if symbol:
            self.operators[symbol] = None
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        symbol = _OPERATORS.get(type(node.op))
        if symbol:
            self.operators[symbol] = None
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, ast.USub) and not isinstance(node.operand, ast.Constant):  # not a literal like -1
            self.operators["unary -"] = None
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        for op in node.ops:
            symbol = _COMPARES.get(type(op))
            if symbol:
                self.operators[symbol] = None
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self.operators["indexing/slicing"] = None
        self.generic_visit(node)


def _inplace_constructs(tree: ast.Module, nodes: list[ast.AST]) -> list[str]:
    """In-place constructs anywhere in the file (``nodes``: all of its nodes) outside
    ``get_inputs``/``get_init_inputs``: ``inplace=True``, ``out=``, calls of ``name_`` methods or
    functions, augmented assignments (``x += y`` changes a tensor in place) and stores into
    subscripts (``x[i] = y``)."""
    found: dict[str, None] = {}
    skip = {id(inner) for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("get_inputs", "get_init_inputs")
            for inner in ast.walk(n)}
    for node in nodes:
        if id(node) in skip:
            continue
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg == "inplace" and isinstance(keyword.value, ast.Constant) and keyword.value.value is True:
                    found["inplace=True"] = None
                elif keyword.arg == "out":
                    found["out="] = None
            name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id if isinstance(node.func, ast.Name) else ""
            if name.endswith("_") and not name.endswith("__") and not name.startswith("_"):
                found[name] = None
        elif isinstance(node, ast.AugAssign):
            found["augmented assignment (" + _OPERATORS.get(type(node.op), "?") + "=)"] = None
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
            found["assignment into a subscript"] = None
    return sorted(found)


# --- learnable parameters ------------------------------------------------------------------------

#: torch.nn layers that hold learnable parameters by default, and the keyword that turns them off.
_PARAMETRIC = {
    "Linear": None, "Bilinear": None, "LazyLinear": None, "Embedding": None, "EmbeddingBag": None,
    "Conv1d": None, "Conv2d": None, "Conv3d": None, "ConvTranspose1d": None, "ConvTranspose2d": None,
    "ConvTranspose3d": None, "PReLU": None, "MultiheadAttention": None, "LSTM": None, "GRU": None, "RNN": None,
    "LSTMCell": None, "GRUCell": None, "RNNCell": None, "TransformerEncoderLayer": None,
    "TransformerDecoderLayer": None, "TransformerEncoder": None, "TransformerDecoder": None, "Transformer": None,
    "BatchNorm1d": "affine", "BatchNorm2d": "affine", "BatchNorm3d": "affine", "SyncBatchNorm": "affine",
    "GroupNorm": "affine", "LayerNorm": "elementwise_affine", "RMSNorm": "elementwise_affine",
    "LocalResponseNorm": "never",
}
#: torch.nn layers that hold learnable parameters only when a keyword turns them on.
_OPT_IN = {"InstanceNorm1d": "affine", "InstanceNorm2d": "affine", "InstanceNorm3d": "affine"}
_CONTAINERS = {"Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict"}
_INIT_GLOSS = {"ones": "ones", "zeros": "zeros", "randn": "standard-normal random values",
               "rand": "uniform random values in [0, 1)", "empty": "uninitialised values (set elsewhere)",
               "full": "a constant", "eye": "the identity", "tensor": "given constants", "arange": "a range"}


def _keyword_false(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is False for k in call.keywords)


def _keyword_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


class _Holdings:
    """What ``__init__`` of a class stores: parameters, layers, containers, helper modules."""

    def __init__(self, nodes: list[ast.AST], aliases: dict[str, str]) -> None:
        self.aliases = aliases
        self.classes: dict[str, ast.ClassDef] = {}
        for n in nodes:
            if isinstance(n, ast.ClassDef):
                self.classes.setdefault(n.name, n)

    def of_class(self, cls: ast.ClassDef, depth: int = 0) -> list[Holding]:
        init = _methods(cls).get("__init__")
        if init is None:
            return []
        out: list[Holding] = []
        for node in ast.walk(init):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                value = node.value
                if value is None:
                    continue
                for target in targets:
                    dotted = _dotted(target)
                    if dotted and dotted.startswith("self.") and dotted.count(".") == 1:
                        holding = self.of_value(dotted.split(".", 1)[1], value, depth)
                        if holding is not None:
                            out.append(holding)
            elif isinstance(node, ast.Call) and _dotted(node.func) == "self.register_parameter" and len(node.args) >= 2:
                name = node.args[0].value if isinstance(node.args[0], ast.Constant) else "?"
                held = self.of_value(str(name), node.args[1], depth)
                if held is not None:
                    out.append(held)
        return out

    def _call_name(self, call: ast.Call) -> str | None:
        dotted = _dotted(call.func)
        return _resolve(dotted, self.aliases) if dotted else None

    def of_value(self, attribute: str, value: ast.expr, depth: int) -> Holding | None:
        if not isinstance(value, ast.Call):
            return None
        name = self._call_name(value)
        if name is None:
            return None
        last = name.rsplit(".", 1)[-1]
        if name in ("torch.nn.Parameter", "torch.nn.parameter.Parameter"):
            if _keyword_false(value, "requires_grad"):
                return Holding(attribute, "nn.Parameter with requires_grad=False (not learnable)", False)
            return Holding(attribute, "nn.Parameter" + self._parameter_detail(value), True)
        if name.startswith("torch.nn.") and last in _PARAMETRIC:
            switch = _PARAMETRIC[last]
            if switch == "never" or (switch and _keyword_false(value, switch)):
                return Holding(attribute, f"nn.{last} without learnable parameters", False)
            extra = ", plus running statistics (buffers, not learnable)" if last.startswith(("BatchNorm", "SyncBatchNorm")) else ""
            return Holding(attribute, f"nn.{last}" + (" without bias" if _keyword_false(value, "bias") else "") + extra, True)
        if name.startswith("torch.nn.") and last in _OPT_IN:
            learnable = _keyword_true(value, _OPT_IN[last])
            return Holding(attribute, f"nn.{last}" + ("" if learnable else " without learnable parameters"), learnable)
        if name.startswith("torch.nn.") and last in _CONTAINERS:
            inner = [self.of_value(f"{attribute}[{i}]", arg, depth) for i, arg in enumerate(self._container_items(value))]
            known = [h for h in inner if h is not None]
            if any(h.learnable for h in known):
                return Holding(attribute, f"nn.{last} containing " + ", ".join(h.what for h in known if h.learnable), True)
            if any(h.learnable is None for h in known):
                return Holding(attribute, f"nn.{last} whose contents cannot be read from the source", None)
            return Holding(attribute, f"nn.{last} without learnable parameters", False)
        if name.startswith("torch.nn.") and last[:1].isupper():
            return Holding(attribute, f"nn.{last} without learnable parameters", False)
        if "." not in name and name in self.classes:
            if depth >= _MAX_DEPTH:
                return Holding(attribute, f"{name} (defined in the reference)", None)
            inner = self.of_class(self.classes[name], depth + 1)
            learnable = [h for h in inner if h.learnable]
            if learnable:
                return Holding(attribute, f"{name} (defined in the reference) with learnable parameters", True)
            if any(h.learnable is None for h in inner):
                return Holding(attribute, f"{name} (defined in the reference)", None)
            return None  # a helper without parameters holds nothing worth listing
        if name.startswith("torch.") or "." not in name:
            return None  # a tensor, number or plain Python value
        return Holding(attribute, f"{_display(name)} (parameters cannot be read from the source)", None)

    @staticmethod
    def _container_items(call: ast.Call) -> list[ast.expr]:
        items: list[ast.expr] = []
        for arg in call.args:
            if isinstance(arg, (ast.List, ast.Tuple)):
                items.extend(arg.elts)
            elif isinstance(arg, ast.Starred):
                continue
            else:
                items.append(arg)
        return items

    def _parameter_detail(self, call: ast.Call) -> str:
        """``of shape (features), initialised to ones`` for ``nn.Parameter(torch.ones(features))``."""
        if not call.args or not isinstance(call.args[0], ast.Call):
            return ""
        inner = call.args[0]
        name = self._call_name(inner) or ""
        last = name.rsplit(".", 1)[-1]
        if not name.startswith("torch.") or last not in _INIT_GLOSS:
            return ""
        text = ""
        if last in ("ones", "zeros", "randn", "rand", "empty") and inner.args:
            dims = inner.args[0].elts if len(inner.args) == 1 and isinstance(inner.args[0], (ast.List, ast.Tuple)) else inner.args
            text += " of shape (" + ", ".join(ast.unparse(d) for d in dims) + ")"
        return text + f", initialised to {_INIT_GLOSS[last]}"


# --- analysis -----------------------------------------------------------------------------------


def analyze(python_code: str, module_name: str, tree: ast.Module | None = None) -> ModuleFacts:
    """Read the facts of ``module_name`` from its source (``tree``: its parse, when already
    made). Raises :class:`ModuleNotUsable`."""
    tree = tree if tree is not None else parse_module(python_code)
    cls = find_class(tree, module_name)
    nodes = list(ast.walk(tree))  # walked once: ast.walk is most of the cost of the analysis
    aliases = _import_aliases(nodes)
    methods = _methods(cls)
    init = methods.get("__init__")
    forward = methods.get("forward")
    holdings = _Holdings(nodes, aliases)

    layers: dict[str, str] = {}
    if init is not None:
        for node in ast.walk(init):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                dotted = _dotted(node.value.func)
                for target in node.targets:
                    t = _dotted(target)
                    if dotted and t and t.startswith("self.") and t.count(".") == 1:
                        resolved = _resolve(dotted, aliases)
                        last = resolved.rsplit(".", 1)[-1]
                        if resolved.startswith("torch.nn.") and last[:1].isupper():
                            layers[t[5:]] = _display(resolved)
                        elif "." not in resolved and resolved in holdings.classes:
                            layers[t[5:]] = f"{resolved} (defined in the reference)"

    local_classes = set(holdings.classes)
    local_functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    collector = _OperationCollector(aliases, layers, local_classes, local_functions)
    # forward first, then the other methods it (transitively) calls, then helper classes'
    # methods and module-level helper functions: the order of the listing is deterministic.
    visited: list[str] = []
    queue = ["forward"] if forward is not None else []
    while queue:
        name = queue.pop(0)
        if name in visited or name not in methods or name == "__init__":
            continue
        visited.append(name)
        collector.visit(methods[name])
        queue += [m for m in collector.self_methods if m not in visited]
    helper_classes = [
        n.name for n in tree.body
        if isinstance(n, ast.ClassDef) and n.name != cls.name
    ]
    for helper in helper_classes:
        for name, fn in _methods(holdings.classes[helper]).items():
            if name != "__init__":
                collector.visit(fn)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name not in ("get_inputs", "get_init_inputs"):
            collector.visit(node)

    returns_tuple: int | None = None
    if forward is not None:
        returns = [n for n in ast.walk(forward) if isinstance(n, ast.Return) and n.value is not None]
        if returns and all(isinstance(r.value, ast.Tuple) for r in returns):
            sizes = {len(r.value.elts) for r in returns}  # type: ignore[union-attr]
            if len(sizes) == 1:
                returns_tuple = sizes.pop()

    doc = ast.get_docstring(cls)
    summary = doc.strip().split("\n\n")[0].replace("\n", " ").strip() if doc else None
    return ModuleFacts(
        class_name=cls.name,
        summary=summary or None,
        init_params=_params(init.args) if init is not None else [],
        forward_params=_params(forward.args) if forward is not None else [],
        inputs=_inputs(tree, aliases),
        init_args=_init_args(tree),
        operations=list(collector.operations.items()),
        operators=list(collector.operators),
        tensor_methods=list(collector.methods),
        layers_used=list(collector.layers_used.items()),
        helper_classes=helper_classes,
        holdings=holdings.of_class(cls),
        returns_tuple=returns_tuple,
        inplace=_inplace_constructs(tree, nodes),
    )


# --- the text -----------------------------------------------------------------------------------


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]" if shape else "[] (a scalar tensor)"


def _input_line(param: str | None, index: int, fact: InputFact) -> str:
    label = f"`{param}`" if param else f"input {index}"
    if fact.unknown:
        return f"- {label}: not written as a literal in the reference's `get_inputs()`; its shape and dtype are not stated here"
    if fact.literal is not None:
        return f"- {label}: the Python value `{fact.literal}`"
    dtype = fact.dtype or "a dtype the reference does not state literally"
    return f"- {label}: {dtype} tensor of shape {_shape_text(fact.shape or ())}, values {fact.values}"


def _value_text(value: Any) -> str:
    return repr(value)


def render(facts: ModuleFacts, module_name: str) -> str:
    """The specification text (Markdown) for ``facts``."""
    new = f"{module_name}New"
    lines: list[str] = [f"# Task: implement `{new}` with Triton kernels", ""]
    lines.append(
        f"Write `{new}`, a `torch.nn.Module` that computes exactly what the reference PyTorch module "
        f"`{module_name}` computes, doing the work of `forward` in Triton kernels."
    )
    lines += ["", "## What the module computes", ""]
    if facts.summary:
        lines.append(f"The reference documents itself as: \"{facts.summary}\"")
        lines.append("")
    if facts.operations or facts.layers_used or facts.operators or facts.tensor_methods:
        lines.append("Its forward pass is built from these operations (each group in the order it first "
                     "appears in the source):")
        for name, gloss in facts.operations:
            lines.append(f"- `{name}`" + (f" ({gloss})" if gloss else ""))
        for attr, kind in facts.layers_used:
            lines.append(f"- the layer `{attr}`: {kind}")
        if facts.tensor_methods:
            lines.append("- tensor methods: " + ", ".join(f"`{m}`" for m in facts.tensor_methods))
        if facts.operators:
            lines.append("- operators: " + ", ".join(f"`{o}`" for o in facts.operators))
    else:
        lines.append("Its forward pass calls no operation: it returns (a view of) its input.")
    if facts.helper_classes:
        lines += ["", "The reference file also defines these helper classes, which the module may use: "
                  + ", ".join(f"`{c}`" for c in facts.helper_classes) + "."]

    lines += ["", "## Interface", "", f"- Class: `{new}(torch.nn.Module)`"]
    if facts.init_params:
        lines.append("- `__init__` parameters (after `self`), in this order: "
                     + ", ".join(f"`{p.signature_text()}`" for p in facts.init_params))
    else:
        lines.append("- `__init__` takes no parameters besides `self`")
    lines.append("- forward signature: `forward(" + ", ".join(["self", *(p.signature_text() for p in facts.forward_params)]) + ")`")
    if facts.init_args is not None:
        args, kwargs = facts.init_args
        given = [_value_text(a) for a in args] + [f"{k}={_value_text(v)}" for k, v in kwargs.items()]
        lines.append("- the reference's test builds the module with "
                     + (", ".join(f"`{g}`" for g in given) if given else "no arguments"))

    lines += ["", "## Inputs", ""]
    params = [p.name for p in facts.forward_params if p.kind == "positional"]
    if facts.inputs is None:
        names = ", ".join(f"`{p.name}`" for p in facts.forward_params) or "no arguments"
        lines.append(f"`forward` takes {names}. The reference does not give example inputs as literals, "
                     "so their shapes and dtypes are not stated here; accept what the reference accepts.")
    else:
        lines.append("The reference's `get_inputs()` passes these values to `forward`, in this order:")
        for i, fact in enumerate(facts.inputs):
            lines.append(_input_line(params[i] if i < len(params) else None, i, fact))
        if len(facts.inputs) != len(params):
            lines.append(f"(`forward` has {len(params)} positional parameter(s) besides `self`; "
                         f"`get_inputs()` gives {len(facts.inputs)} value(s).)")
        lines.append("These are example sizes: the module must work for any sizes the reference accepts.")

    lines += ["", "## Output", ""]
    if facts.returns_tuple is not None:
        lines.append(f"`forward` returns a tuple of {facts.returns_tuple} values, like the reference: each with "
                     "the reference's shape and dtype and the same values up to floating-point tolerance.")
    else:
        lines.append("`forward` returns what the reference returns: the same shape and dtype, and the same "
                     "values up to floating-point tolerance.")

    learnable = [h for h in facts.holdings if h.learnable]
    unknown = [h for h in facts.holdings if h.learnable is None]
    if learnable or unknown:
        lines += ["", "## Learnable parameters", ""]
        if learnable:
            lines.append("The reference holds these learnable parameters; hold the same ones, under the same "
                         "attribute names and with the same shapes, so the reference's weights load into the new module:")
            lines += [f"- `self.{h.attribute}`: {h.what}" for h in learnable]
        if unknown:
            lines.append("These attributes may hold parameters that cannot be read from the source; "
                         "mirror them as the reference does:")
            lines += [f"- `self.{h.attribute}`: {h.what}" for h in unknown]

    lines += ["", "## Requirements", ""]
    lines.append("- Compute every value of `forward` in Triton kernels (`@triton.jit`); PyTorch may only allocate "
                 "outputs, hold parameters and change views or shapes (reshape, transpose).")
    lines.append("- Produce the reference's results for every input the reference accepts, including sizes that "
                 "are not powers of two and dimensions of size 1.")
    if facts.inplace:
        lines.append("- The reference uses in-place operations (" + ", ".join(f"`{m}`" for m in facts.inplace)
                     + "); match the values it returns.")
    else:
        lines.append("- The reference changes no tensor in place, so its inputs are left unchanged; "
                     "the new module must not modify its inputs either.")
    return "\n".join(lines) + "\n"


def template_specification(python_code: str, module_name: str, tree: ast.Module | None = None) -> str:
    """The ``template-ast-v1`` specification of ``module_name`` (``tree``: the parse of
    ``python_code``, when already made). Raises :class:`ModuleNotUsable`."""
    return render(analyze(python_code, module_name, tree), module_name)
