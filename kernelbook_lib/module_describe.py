"""Describing one class of a PyTorch module file, for the template prompt generator
(:mod:`kernelbook_lib.prompt_template`, which writes the text).

:func:`describe_module` reads what the template states about one class: its interface (the
``__init__`` parameters and the ``forward`` signature, with literal defaults and type-like
annotations), the literal inputs of ``get_inputs()``/``get_init_inputs()`` (read by
:mod:`kernelbook_lib.module_inputs`), the operations its ``forward`` uses in order of first use,
its learnable parameters and its in-place constructs. :func:`check_module` only checks that the
source parses (:func:`kernelbook_lib.module_parse.parse_code`) and defines the class; a source
that cannot describe the module raises :class:`ModuleNotUsable` with a ledger reason.

The code is parsed, never executed; every walk uses an explicit stack.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

from kernelbook_lib.module_inputs import InputFact, _init_args, _inputs, _literal
from kernelbook_lib.module_parse import (
    CHILD_FIELDS,
    INPUT_FUNCTIONS,
    ImportTable,
    _display,
    _dotted,
    _methods,
    child_fields,
    children,
    parse_code,
)

# --- describing one class (the template prompt generator) ------------------------------------

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
    """:func:`parse_code`, with a failure raised as :class:`ModuleNotUsable`."""
    tree, error = parse_code(python_code)
    if tree is None:
        raise ModuleNotUsable(REASON_UNPARSEABLE, error)
    return tree


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


#: How a default that is not a literal is stated: the expression itself is never copied.
COMPUTED_DEFAULT = "<computed at construction>"


@dataclass(frozen=True)
class Param:
    name: str
    default: str | None = None  # source text of a literal default, or COMPUTED_DEFAULT
    kind: str = "positional"  # positional, keyword-only, *args, **kwargs
    annotation: str | None = None  # source text of a type-like annotation (others are left out)

    def signature_text(self) -> str:
        prefix = {"*args": "*", "**kwargs": "**"}.get(self.kind, "")
        text = prefix + self.name
        if self.annotation:
            text += f": {self.annotation}"
        if self.default is not None:
            text += f"={self.default}"
        return text


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


# Expressions the text may quote: names, attributes, subscripts and literals (type annotations
# such as ``Optional[torch.Tensor]`` or ``int | None``), and arithmetic on names and numbers
# (shapes such as ``(heads, dim // heads)``). Anything else (a call, a lambda, a comprehension)
# is code the text must not carry.
_TYPE_LIKE_NODES = frozenset((ast.Name, ast.Attribute, ast.Subscript, ast.Tuple, ast.List, ast.Constant,
                              ast.BinOp, ast.BitOr, ast.Load))
_ARITHMETIC_NODES = frozenset((ast.Name, ast.Attribute, ast.Constant, ast.BinOp, ast.UnaryOp, ast.Load,
                               ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Div, ast.Pow, ast.Mod, ast.USub))
_MAX_QUOTED_NODES = 64


def _plain_text(node: ast.expr, allowed: frozenset[type]) -> str | None:
    """The source text of ``node`` when it is built only from ``allowed`` node types (and is
    small), else None."""
    for count, inner in enumerate(ast.walk(node)):
        if count >= _MAX_QUOTED_NODES or type(inner) not in allowed:
            return None
    return ast.unparse(node)


def _default_text(node: ast.expr | None) -> str | None:
    """A literal default's source text; anything else is :data:`COMPUTED_DEFAULT`."""
    if node is None:
        return None
    try:
        _literal(node)
    except ValueError:
        return COMPUTED_DEFAULT
    return ast.unparse(node)


def _annotation_text(node: ast.expr | None) -> str | None:
    if node is None:
        return None
    return _plain_text(node, _TYPE_LIKE_NODES)


def _params(args: ast.arguments, skip_self: bool = True) -> list[Param]:
    positional = list(args.posonlyargs) + list(args.args)
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    out: list[Param] = []
    for arg, default in zip(positional, defaults, strict=True):
        out.append(Param(arg.arg, _default_text(default), "positional", _annotation_text(arg.annotation)))
    if args.vararg is not None:
        out.append(Param(args.vararg.arg, None, "*args"))
    for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        out.append(Param(arg.arg, _default_text(default), "keyword-only", _annotation_text(arg.annotation)))
    if args.kwarg is not None:
        out.append(Param(args.kwarg.arg, None, "**kwargs"))
    if skip_self and out and out[0].kind == "positional":
        out = out[1:]
    return out


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


class _OperationListing:
    """Operations of one or more functions, in source order of first use (a pre-order walk
    with an explicit stack: nested code cannot exhaust the interpreter's stack)."""

    def __init__(self, imports: ImportTable, layers: dict[str, str], local_classes: set[str],
                 local_functions: set[str]) -> None:
        self.aliases = imports.aliases
        self.imports = imports
        self.layers = layers  # self.attr -> layer type (from __init__)
        self.local_classes = local_classes
        self.local_functions = local_functions
        self.operations: dict[str, str] = {}
        self.operators: dict[str, None] = {}
        self.methods: dict[str, None] = {}
        self.layers_used: dict[str, str] = {}
        self.self_methods: dict[str, None] = {}

    def visit(self, root: ast.AST) -> None:
        operators = self.operators
        stack = [root]
        while stack:
            node = stack.pop()
            t = type(node)
            if t is ast.Call:
                self._call(node)
            elif t is ast.BinOp or t is ast.AugAssign:
                symbol = _OPERATORS.get(type(node.op))
                if symbol:
                    operators[symbol] = None
            elif t is ast.UnaryOp:
                if type(node.op) is ast.USub and type(node.operand) is not ast.Constant:  # not a literal like -1
                    operators["unary -"] = None
            elif t is ast.Compare:
                for op in node.ops:
                    symbol = _COMPARES.get(type(op))
                    if symbol:
                        operators[symbol] = None
            elif t is ast.Subscript:
                operators["indexing/slicing"] = None
            fields = CHILD_FIELDS.get(t) or child_fields(t)
            if fields:
                found = children(node, fields)
                found.reverse()  # popped in source order
                stack.extend(found)

    def _call(self, node: ast.Call) -> None:
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
            resolved = self.imports.resolve(dotted)
            self.operations.setdefault(_display(resolved), _GLOSS.get(resolved.rsplit(".", 1)[-1], ""))
        elif type(func) is ast.Attribute:
            # A method of a tensor (or of another value): ``x.softmax(dim=-1)``, ``x.view(...)``.
            self.methods[func.attr] = None


def _inplace_constructs(tree: ast.Module, nodes: list[ast.AST]) -> list[str]:
    """In-place constructs anywhere in the file (``nodes``: all of its nodes) outside
    ``get_inputs``/``get_init_inputs``: ``inplace=True``, ``out=``, calls of ``name_`` methods or
    functions, augmented assignments (``x += y`` changes a tensor in place) and stores into
    subscripts (``x[i] = y``)."""
    found: dict[str, None] = {}
    skip = {id(inner) for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in INPUT_FUNCTIONS
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
_NN_CONTAINERS = {"Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict"}
_INIT_GLOSS = {"ones": "ones", "zeros": "zeros", "randn": "standard-normal random values",
               "rand": "uniform random values in [0, 1)", "empty": "uninitialised values (set elsewhere)",
               "full": "a constant", "eye": "the identity", "tensor": "given constants", "arange": "a range"}


def _keyword_false(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is False for k in call.keywords)


def _keyword_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


class _Holdings:
    """What ``__init__`` of a class stores: parameters, layers, containers, helper modules."""

    def __init__(self, nodes: list[ast.AST], imports: ImportTable) -> None:
        self.imports = imports
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
        return self.imports.resolve(dotted) if dotted else None

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
        if name.startswith("torch.nn.") and last in _NN_CONTAINERS:
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
            shown = [_plain_text(d, _ARITHMETIC_NODES) for d in dims]
            if all(s is not None for s in shown):
                text += " of shape (" + ", ".join(shown) + ")"  # type: ignore[arg-type]
            else:
                text += " of a shape computed at construction"
        return text + f", initialised to {_INIT_GLOSS[last]}"


# --- describe_module --------------------------------------------------------------------------


def describe_module(python_code: str, module_name: str, tree: ast.Module | None = None) -> ModuleFacts:
    """Read the facts of ``module_name`` from its source (``tree``: its parse, when already
    made). Raises :class:`ModuleNotUsable`."""
    tree = tree if tree is not None else parse_module(python_code)
    cls = find_class(tree, module_name)
    nodes = list(ast.walk(tree))  # walked once: ast.walk is most of the cost of the analysis
    imports = ImportTable.of(nodes)
    methods = _methods(cls)
    init = methods.get("__init__")
    forward = methods.get("forward")
    holdings = _Holdings(nodes, imports)

    layers: dict[str, str] = {}
    if init is not None:
        for node in ast.walk(init):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                dotted = _dotted(node.value.func)
                for target in node.targets:
                    t = _dotted(target)
                    if dotted and t and t.startswith("self.") and t.count(".") == 1:
                        resolved = imports.resolve(dotted)
                        last = resolved.rsplit(".", 1)[-1]
                        if resolved.startswith("torch.nn.") and last[:1].isupper():
                            layers[t[5:]] = _display(resolved)
                        elif "." not in resolved and resolved in holdings.classes:
                            layers[t[5:]] = f"{resolved} (defined in the reference)"

    local_classes = set(holdings.classes)
    local_functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    collector = _OperationListing(imports, layers, local_classes, local_functions)
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
        if isinstance(node, ast.FunctionDef) and node.name not in INPUT_FUNCTIONS:
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
        inputs=_inputs(tree, imports),
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

