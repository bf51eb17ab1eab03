"""Reading a PyTorch module file: the one analyser behind the static judge's difficulty
(:mod:`kernelbook_lib.static_judge`) and the template prompt generator
(:mod:`kernelbook_lib.prompt_template`).

Dataset code is untrusted: it is only ever parsed with :func:`ast.parse` (literals are read with
:func:`ast.literal_eval`), never executed, imported or evaluated. Every walk here uses an explicit
stack (no recursion), so deeply nested code cannot exhaust the interpreter's stack.

One reading serves both consumers:

* :func:`parse_code` is the one parse (it never raises; compile-time warnings are silenced under a
  lock, so a ``-W error`` environment cannot turn an invalid escape in a dataset string into a
  syntax error; the lock serialises only the parse, which holds the GIL anyway).
* :class:`ImportTable` reads the import statements once, into the exact bindings (``F`` ->
  ``torch.nn.functional``, for display) and the names that denote torch namespaces and objects
  (for recognising operations; the conventional ``torch``/``nn``/``F`` count even when a scraped
  file forgot to import them).
* The layout: top-level classes and functions are the module's *units*; ``get_inputs`` and
  ``get_init_inputs`` are test inputs, not computation; ``__init__``-like methods are set-up code.
* :func:`analyze_module` walks the whole file once and counts what it computes, for the static
  judge's difficulty (see its docstring for what counts).
* :func:`describe_module` reads what the template states about one class: its interface, the
  literal inputs of ``get_inputs()``/``get_init_inputs()``, the operations its ``forward`` uses in
  order of first use, its learnable parameters and its in-place constructs.
"""

from __future__ import annotations

import ast
import re
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any

# --- parsing ---------------------------------------------------------------------------------

_PARSE_LOCK = threading.Lock()


def parse_code(code: str) -> tuple[ast.Module | None, str]:
    """``(tree, "")`` or ``(None, reason)``; never raises. The reason never quotes the code."""
    try:
        with _PARSE_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(code), ""
    except SyntaxError as exc:  # includes IndentationError, and null bytes on Python 3.11.4+
        where = f" (line {exc.lineno})" if exc.lineno else ""
        return None, f"SyntaxError: {exc.msg}{where}"
    except UnicodeError:  # lone surrogates cannot be encoded for the parser
        return None, "source is not valid Unicode (UnicodeError)"
    except ValueError:  # null bytes on older Pythons
        return None, "source contains null bytes (ValueError)"
    except RecursionError:
        return None, "nested too deeply for the parser (RecursionError)"
    except MemoryError:
        return None, "too complex for the parser (parser stack overflow)"


# --- traversal -------------------------------------------------------------------------------

# Fields that never hold child nodes worth visiting: names, flags, and the expression context /
# operator singletons (``Load()``, ``Add()``), which are inspected through their parent.
_NON_CHILD_FIELDS = frozenset(
    ("ctx", "op", "ops", "id", "attr", "name", "arg", "kind", "level", "module", "type_comment",
     "is_async", "conversion", "lineno", "col_offset", "end_lineno", "end_col_offset", "n", "s")
)
#: Node type -> the fields that may hold child nodes (a cache filled by :func:`child_fields`;
#: hot loops read it directly and call :func:`child_fields` on a miss).
CHILD_FIELDS: dict[type, tuple[str, ...]] = {ast.Constant: ()}


def child_fields(node_type: type) -> tuple[str, ...]:
    """The fields of a node type that may hold child nodes (cached per type)."""
    fields = CHILD_FIELDS.get(node_type)
    if fields is None:
        fields = tuple(f for f in node_type._fields if f not in _NON_CHILD_FIELDS)
        CHILD_FIELDS[node_type] = fields
    return fields


def children(node: ast.AST, fields: tuple[str, ...]) -> list[ast.AST]:
    """The child nodes of ``node`` in its ``fields``, in source order (a faster
    ``ast.iter_child_nodes``)."""
    found: list[ast.AST] = []
    for name in fields:
        value = getattr(node, name, None)
        if value is None:
            continue
        if type(value) is list:
            found.extend(item for item in value if isinstance(item, ast.AST))
        elif isinstance(value, ast.AST):
            found.append(value)
    return found


def chain(node: ast.expr) -> tuple[str | None, list[str]]:
    """Root name and attribute parts of ``a.b.c`` (parts exclude the root); root None if the
    chain does not start at a plain name (``super().x``, ``f(x).y``)."""
    parts: list[str] = []
    while type(node) is ast.Attribute:
        parts.append(node.attr)
        node = node.value
    parts.reverse()
    if type(node) is ast.Name:
        return node.id, parts
    return None, parts


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attribute accesses on a name, else None."""
    root, parts = chain(node)  # type: ignore[arg-type]
    if root is None:
        return None
    return ".".join([root, *parts]) if parts else root


# --- imports ---------------------------------------------------------------------------------

# The torch namespaces a ``from torch... import name`` brings in as a namespace, not an object.
_TORCH_NAMESPACES = frozenset(("nn", "functional", "linalg", "fft", "special"))
# Names that denote torch even without an import: scraped files often rely on the conventions.
_TORCH_ROOTS = frozenset(("torch", "nn", "F", "functional"))


class ImportTable:
    """What the import statements of a module bind, read once for both consumers.

    * ``aliases``: each local name bound by an absolute import, mapped to the dotted name it
      stands for (``F`` -> ``torch.nn.functional``, ``relu`` -> ``torch.nn.functional.relu``; a
      plain ``import a.b`` binds ``a``). Used to spell operations as the source means them.
    * ``torch_roots``: names that denote a torch namespace (``torch``, ``nn``, ``F`` and
      ``functional`` by convention, plus every name an import binds to torch or one of its
      namespaces); ``torch_names``: names imported from a torch namespace, mapped to their name
      there (``from torch.nn import Linear as L`` -> ``L: Linear``). Used to recognise operations.
    """

    __slots__ = ("aliases", "torch_roots", "torch_names")

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.torch_roots: set[str] = set(_TORCH_ROOTS)
        self.torch_names: dict[str, str] = {}

    @classmethod
    def of(cls, nodes: list[ast.AST]) -> ImportTable:
        """The table of every import statement among ``nodes``, in their order."""
        table = cls()
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                table.add(node)
        return table

    def add(self, node: ast.Import | ast.ImportFrom) -> None:
        """Record one import statement (a later binding of the same alias replaces an earlier one)."""
        aliases = self.aliases
        if type(node) is ast.Import:
            for alias in node.names:
                name = alias.name
                if alias.asname:
                    aliases[alias.asname] = name
                else:
                    top = name.split(".")[0]
                    aliases.setdefault(top, top)
                if name == "torch" or name.startswith("torch."):
                    self.torch_roots.add(alias.asname or name.split(".")[0])
            return
        module = node.module or ""
        if module and node.level == 0:
            for alias in node.names:
                if alias.name != "*":
                    aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
        if module != "torch" and not module.startswith("torch."):
            return
        for alias in node.names:
            local = alias.asname or alias.name
            if alias.name in _TORCH_NAMESPACES:
                self.torch_roots.add(local)
            elif alias.name == "init":
                continue
            elif alias.name != "*":
                self.torch_names[local] = alias.name

    def resolve(self, dotted: str) -> str:
        """``dotted`` with its first name replaced by what the imports bind it to."""
        head, _, rest = dotted.partition(".")
        base = self.aliases.get(head, head)
        return f"{base}.{rest}" if rest else base


def _display(resolved: str) -> str:
    """Short, conventional spelling: ``torch.nn.functional.x`` -> ``F.x``, ``torch.nn.X`` -> ``nn.X``."""
    if resolved.startswith("torch.nn.functional."):
        return "F." + resolved[len("torch.nn.functional."):]
    if resolved.startswith("torch.nn."):
        return "nn." + resolved[len("torch.nn."):]
    return resolved


# --- layout ----------------------------------------------------------------------------------

#: The functions of a KernelBook file that build test inputs: not part of what the module computes.
INPUT_FUNCTIONS = frozenset(("get_inputs", "get_init_inputs"))
_SETUP_FUNCS = frozenset(("__init__", "extra_repr", "__repr__", "__str__"))


def _is_setup_func(name: str) -> bool:
    """Set-up code (``__init__``, ``reset_parameters``, ``init_weights``...), not computation."""
    return name in _SETUP_FUNCS or name.lstrip("_").startswith(("init", "reset", "weight_init"))


def _is_main_guard(node: ast.If) -> bool:
    test = node.test
    return (
        type(test) is ast.Compare
        and type(test.left) is ast.Name
        and test.left.id == "__name__"
    )


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


# --- the operation vocabulary ----------------------------------------------------------------
# Canonical operation name -> intrinsic difficulty level (0-8; 9-10 come from structure).


def _levels(level: int, names: str) -> dict[str, int]:
    return {name: level for name in names.split()}


OPERATION_LEVELS: dict[str, int] = {
    # 0: copies, views, casts, creation
    **_levels(
        0,
        "view reshape clone contiguous flatten unflatten ravel squeeze unsqueeze detach to type "
        "float half double int long bool bfloat16 cpu cuda identity view_as reshape_as expand "
        "expand_as type_as zeros ones zeros_like ones_like empty empty_like full full_like arange "
        "linspace tensor as_tensor from_numpy copy_ fill_ zero_ new_zeros new_ones new_empty "
        "new_full new_tensor rand randn rand_like randn_like randint requires_grad_ eye",
    ),
    # 1: layout / data movement
    **_levels(
        1,
        "permute transpose t cat concat concatenate stack hstack vstack split chunk narrow select "
        "index_select gather scatter scatter_add flip roll repeat repeat_interleave tile pad "
        "pixel_shuffle pixel_unshuffle channel_shuffle movedim unbind masked_select take tril "
        "triu diag diagonal index_add unfold_view",
    ),
    # 1: elementwise
    **_levels(
        1,
        "relu relu6 leaky_relu elu selu celu gelu silu swish mish sigmoid hardsigmoid logsigmoid "
        "tanh hardtanh hardswish hardshrink softshrink tanhshrink softsign softplus threshold "
        "prelu rrelu glu exp exp2 expm1 log log2 log10 log1p sqrt rsqrt abs neg negative "
        "reciprocal pow square sin cos tan asin acos atan atan2 sinh cosh erf erfc erfinv floor "
        "ceil round trunc frac sign sgn clamp clip clamp_min clamp_max add sub subtract mul "
        "multiply div divide true_divide floor_divide remainder fmod maximum minimum fmax fmin "
        "where masked_fill lerp addcmul addcdiv eq ne lt le gt ge logical_and logical_or "
        "logical_not logical_xor bitwise_and bitwise_or bitwise_xor bitwise_not isnan isinf "
        "nan_to_num dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout "
        "hypot copysign heaviside xlogy logit compare affine outer_add",
    ),
    # 2: gathers
    **_levels(2, "embedding one_hot"),
    # 3: plain reductions
    **_levels(
        3,
        "sum mean max min amax amin argmax argmin prod norm std var std_mean var_mean all any "
        "count_nonzero nansum nanmean vector_norm mse_loss l1_loss smooth_l1_loss huber_loss "
        "soft_margin_loss margin_ranking_loss hinge_embedding_loss adaptive_avg_pool1d "
        "adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d "
        "adaptive_max_pool3d upsample_nearest",
    ),
    # 4: harder reductions, windows, scans, resampling
    **_levels(
        4,
        "median mode cumsum cumprod cummax cummin binary_cross_entropy "
        "binary_cross_entropy_with_logits kl_div poisson_nll_loss nll_loss cosine_similarity "
        "pairwise_distance cosine_embedding_loss triplet_margin_loss normalize dist matrix_norm "
        "avg_pool1d avg_pool2d avg_pool3d max_pool1d max_pool2d max_pool3d lp_pool1d lp_pool2d "
        "interpolate upsample upsample_bilinear dot inner outer embedding_bag",
    ),
    # 5: moderate
    **_levels(
        5,
        "softmax log_softmax softmin gumbel_softmax layer_norm batch_norm instance_norm "
        "rms_norm linear matmul mm bmm addmm baddbmm addbmm einsum tensordot mv cdist topk sort "
        "argsort kthvalue logsumexp affine_grid multi_margin_loss multilabel_margin_loss "
        "multilabel_soft_margin_loss",
    ),
    # 6: moderate, upper
    **_levels(
        6,
        "group_norm local_response_norm cross_entropy bilinear unfold fold grid_sample "
        "rnn_cell cholesky solve",
    ),
    # 7: complex
    **_levels(
        7,
        "conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d "
        "scaled_dot_product_attention attention rnn lstm_cell gru_cell fft rfft irfft fft2 "
        "rfft2 irfft2 fftn ifft inverse det",
    ),
    # 8: complex, upper
    **_levels(8, "multihead_attention lstm gru svd qr stft ctc_loss"),
    # structure-driven; their own level is the top of the complex band
    **_levels(8, "transformer transformer_encoder transformer_decoder transformer_encoder_layer "
              "transformer_decoder_layer"),
}

# nn layer class -> canonical operation
LAYER_OPERATIONS: dict[str, str] = {
    "Identity": "identity", "Flatten": "flatten", "Unflatten": "unflatten",
    "ReLU": "relu", "ReLU6": "relu6", "LeakyReLU": "leaky_relu", "ELU": "elu", "SELU": "selu",
    "CELU": "celu", "GELU": "gelu", "SiLU": "silu", "Mish": "mish", "Sigmoid": "sigmoid",
    "Hardsigmoid": "hardsigmoid", "LogSigmoid": "logsigmoid", "Tanh": "tanh",
    "Hardtanh": "hardtanh", "Hardswish": "hardswish", "Hardshrink": "hardshrink",
    "Softshrink": "softshrink", "Tanhshrink": "tanhshrink", "Softsign": "softsign",
    "Softplus": "softplus", "Threshold": "threshold", "PReLU": "prelu", "RReLU": "rrelu",
    "GLU": "glu", "Dropout": "dropout", "Dropout1d": "dropout1d", "Dropout2d": "dropout2d",
    "Dropout3d": "dropout3d", "AlphaDropout": "alpha_dropout",
    "FeatureAlphaDropout": "feature_alpha_dropout",
    "ZeroPad2d": "pad", "ConstantPad1d": "pad", "ConstantPad2d": "pad", "ConstantPad3d": "pad",
    "ReflectionPad1d": "pad", "ReflectionPad2d": "pad", "ReflectionPad3d": "pad",
    "ReplicationPad1d": "pad", "ReplicationPad2d": "pad", "ReplicationPad3d": "pad",
    "PixelShuffle": "pixel_shuffle", "PixelUnshuffle": "pixel_unshuffle",
    "ChannelShuffle": "channel_shuffle",
    "Embedding": "embedding", "EmbeddingBag": "embedding_bag",
    "MSELoss": "mse_loss", "L1Loss": "l1_loss", "SmoothL1Loss": "smooth_l1_loss",
    "HuberLoss": "huber_loss", "SoftMarginLoss": "soft_margin_loss",
    "MarginRankingLoss": "margin_ranking_loss", "HingeEmbeddingLoss": "hinge_embedding_loss",
    "BCELoss": "binary_cross_entropy", "BCEWithLogitsLoss": "binary_cross_entropy_with_logits",
    "KLDivLoss": "kl_div", "PoissonNLLLoss": "poisson_nll_loss", "NLLLoss": "nll_loss",
    "CosineSimilarity": "cosine_similarity", "PairwiseDistance": "pairwise_distance",
    "CosineEmbeddingLoss": "cosine_embedding_loss", "TripletMarginLoss": "triplet_margin_loss",
    "CrossEntropyLoss": "cross_entropy", "MultiMarginLoss": "multi_margin_loss",
    "MultiLabelMarginLoss": "multilabel_margin_loss",
    "MultiLabelSoftMarginLoss": "multilabel_soft_margin_loss", "CTCLoss": "ctc_loss",
    "AdaptiveAvgPool1d": "adaptive_avg_pool1d", "AdaptiveAvgPool2d": "adaptive_avg_pool2d",
    "AdaptiveAvgPool3d": "adaptive_avg_pool3d", "AdaptiveMaxPool1d": "adaptive_max_pool1d",
    "AdaptiveMaxPool2d": "adaptive_max_pool2d", "AdaptiveMaxPool3d": "adaptive_max_pool3d",
    "AvgPool1d": "avg_pool1d", "AvgPool2d": "avg_pool2d", "AvgPool3d": "avg_pool3d",
    "MaxPool1d": "max_pool1d", "MaxPool2d": "max_pool2d", "MaxPool3d": "max_pool3d",
    "LPPool1d": "lp_pool1d", "LPPool2d": "lp_pool2d",
    "Upsample": "upsample", "UpsamplingNearest2d": "upsample_nearest",
    "UpsamplingBilinear2d": "upsample_bilinear",
    "Softmax": "softmax", "Softmax2d": "softmax", "LogSoftmax": "log_softmax",
    "Softmin": "softmin",
    "LayerNorm": "layer_norm", "RMSNorm": "rms_norm", "BatchNorm1d": "batch_norm",
    "BatchNorm2d": "batch_norm", "BatchNorm3d": "batch_norm", "SyncBatchNorm": "batch_norm",
    "InstanceNorm1d": "instance_norm", "InstanceNorm2d": "instance_norm",
    "InstanceNorm3d": "instance_norm", "GroupNorm": "group_norm",
    "LocalResponseNorm": "local_response_norm",
    "Linear": "linear", "LazyLinear": "linear", "Bilinear": "bilinear",
    "Unfold": "unfold", "Fold": "fold",
    "Conv1d": "conv1d", "Conv2d": "conv2d", "Conv3d": "conv3d", "LazyConv1d": "conv1d",
    "LazyConv2d": "conv2d", "LazyConv3d": "conv3d", "ConvTranspose1d": "conv_transpose1d",
    "ConvTranspose2d": "conv_transpose2d", "ConvTranspose3d": "conv_transpose3d",
    "MultiheadAttention": "multihead_attention", "RNN": "rnn", "LSTM": "lstm", "GRU": "gru",
    "RNNCell": "rnn_cell", "LSTMCell": "lstm_cell", "GRUCell": "gru_cell",
    "Transformer": "transformer", "TransformerEncoder": "transformer_encoder",
    "TransformerDecoder": "transformer_decoder",
    "TransformerEncoderLayer": "transformer_encoder_layer",
    "TransformerDecoderLayer": "transformer_decoder_layer",
}

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


def _dtype(keywords: dict[str, ast.expr], imports: ImportTable, default: str) -> str | None:
    node = keywords.get("dtype")
    if node is None:
        return default
    dotted = _dotted(node)
    if dotted is None:
        return None
    resolved = imports.resolve(dotted)
    return _DTYPE_NAMES.get(resolved.rsplit(".", 1)[-1]) if resolved.startswith("torch.") else None


def _input_fact(node: ast.expr, imports: ImportTable) -> InputFact:
    if isinstance(node, ast.Call):
        dotted = _dotted(node.func)
        name = imports.resolve(dotted) if dotted else ""
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if name in _FACTORIES:
            shape = _shape(list(node.args), keywords)
            if shape is None:
                return InputFact(unknown=True)
            return InputFact(shape=shape, dtype=_dtype(keywords, imports, "float32"), values=_FACTORIES[name])
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
            return InputFact(shape=shape, dtype=_dtype(keywords, imports, "int64"), values=f"integers in [{low}, {high})")
        if name == "torch.full" and len(node.args) >= 2:
            shape = _shape([node.args[0]], {})
            try:
                fill = _literal(node.args[1])
            except ValueError:
                return InputFact(unknown=True)
            if shape is None or not isinstance(fill, (int, float, bool)):
                return InputFact(unknown=True)
            default = "bool" if isinstance(fill, bool) else "int64" if isinstance(fill, int) else "float32"
            return InputFact(shape=shape, dtype=_dtype(keywords, imports, default), values=f"all equal to {fill!r}")
        return InputFact(unknown=True)
    try:
        value = _literal(node)
    except ValueError:
        return InputFact(unknown=True)
    return InputFact(literal=repr(value))


def _inputs(tree: ast.Module, imports: ImportTable) -> list[InputFact] | None:
    value = _returned(_function(tree, "get_inputs"))
    if not isinstance(value, (ast.List, ast.Tuple)):
        return None
    return [_input_fact(element, imports) for element in value.elts]


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

