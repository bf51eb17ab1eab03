"""The offline static judge: a deterministic, AST-based stand-in for the LLM judge.

Dataset code is untrusted: it is only ever parsed with :func:`ast.parse`, never executed,
imported or evaluated. Every public function here returns a verdict for any input (syntax
errors, null bytes, code nested too deeply for the parser, empty strings); it never raises.
Each source is parsed once and walked once, with an explicit stack (no recursion), so deeply
nested trees cannot exhaust the interpreter's stack.

Difficulty (0-10): what the PyTorch reference module does
==========================================================

:func:`analyze_module` collects the operations the module performs: ``torch.*`` / ``F.*``
calls, ``nn.*`` layers built anywhere, tensor methods (``x.sum(1)``), and the operators
``+ - * / ** @`` and comparisons in compute code. Each operation has an intrinsic level
(the tables ``_FUNCS``/``_LAYERS`` below). In ``__init__`` and other set-up methods
(``reset_parameters``, ``init_weights``...) only layer constructions count, so arithmetic
that builds buffers or shapes does not make a module look harder. ``get_inputs``,
``get_init_inputs`` and ``if __name__ == "__main__"`` blocks are ignored. A construction or
operation inside a loop counts as many times as the loop runs when that is a literal
(``range(4)``, a literal list), otherwise twice (capped at 64).

Classes and module-level functions are *units*. A unit that constructs another unit
(``Block(...)``, ``conv3x3(...)``) or subclasses it includes that unit's layers, so the layer counts of the
largest top-level unit (the one nobody else builds; ties go to the first defined) describe
the whole network: conv layers, linear layers, attention (``nn.MultiheadAttention``,
``scaled_dot_product_attention``, or a unit doing both a matmul-like op and a softmax),
recurrent layers, ``nn.Transformer*`` layers, layer/RMS norms, and residual blocks (a unit
with conv/linear/attention layers whose compute code adds an input back, e.g. ``x + f(x)`` or
``out += identity``).

The score is the band of the highest-level operation, moved to the upper value by counts:

* 0 - trivial copy/identity: nothing but view/reshape/clone/contiguous/creation, or no op.
* 1-2 - elementwise and layout (relu, add, mul, sigmoid, tanh, clamp, permute, cat...):
  1; 2 when three or more such operations are chained, or for a gather (embedding, one_hot).
* 3-4 - basic reductions (sum, mean, max along a dim, norm, var, simple losses, pooling):
  3; 4 for an intrinsically harder one (normalize, cosine similarity, pooling windows,
  interpolation, BCE/KL losses) or combined with broadcasting (``keepdim=True``), two or
  more reductions, or two or more other operations.
* 5-6 - moderate (softmax, log_softmax, layer/batch/instance norm, linear/matmul/einsum,
  topk/sort): 5; 6 for group norm, cross-entropy, unfold/grid_sample, or two or more
  moderate operations (an MLP with two Linear layers, LayerNorm + Linear), or six or more
  non-trivial operations overall.
* 7-8 - complex (conv1d/2d/3d, transposed conv, attention as matmul + softmax,
  scaled_dot_product_attention, RNN cells): 7; 8 for MultiheadAttention/LSTM/GRU, or two or
  more complex operations, or a complex one combined with two or more operations of levels
  4-6 (pooling, norms, linear projections).
* 9-10 - advanced, whole architectures. Signals: ``nn.Transformer*`` layers; a transformer-
  style block (attention + two or more linear layers + layer norm + residual add); six or
  more conv layers; two or more residual blocks stacked; twelve or more linear layers;
  recurrent layers combined with attention or conv layers. One signal gives 9; 10 with two
  signals or a strong one (two or more transformer layers or attention blocks, 16 or more
  conv layers, four or more residual blocks). FlashAttention-style tiling is not detected.

A module that does not parse is scored from the calls that can still be recognised in its
text (``name(`` after a dot, or a known ``nn`` layer name), without structure, and says so in
the rationale; with nothing recognisable its difficulty is 0 (the documented default).

Style (0-10): the Triton solution
=================================

:func:`style_of` takes the answer (the text inside ``<answer>`` tags, fences allowed: the code
is :func:`kernelbook_lib.text.solution_code`). Gates first:

* empty solution: 0; does not parse: 0, or 1 when a ``triton.jit`` decorator is visible in
  the text; parses but has no ``@triton.jit`` kernel: 1.

Otherwise the score is the sum of these points, clamped to 2..10 (a parsing solution with a
kernel that passed the reward filter "works", so it is at least "messy but works"):

* masks: +2 every ``tl.load``/``tl.store`` is masked (``mask=``, the positional mask, or
  ``boundary_check=``), +1 some are.
* block sizes: +1 kernels take ``tl.constexpr`` parameters; +1 no inline power-of-two magic
  numbers (>= 16: anywhere in kernel bodies, e.g. ``tl.arange(0, 1024)``, in positional launch
  arguments, or in ``triton.cdiv`` arguments outside kernels).
* names: +2 at most 10% of the distinct names bound in the code are opaque (one letter other
  than i/j/k, or numbered like ``tmp0``, ``buf1``, ``in_ptr0``, ``x0``), +1 at most 35%.
* structure: +1 a ``...New(nn.Module)`` class (any class named ``...New`` with a base);
  +1 helper functions besides the kernels, ``forward`` and ``__init__`` (e.g. a launch
  wrapper) and no function over 60 lines.
* documentation: +1 at least one docstring and one comment or docstring per 15 lines (at
  least two in all). Comments are counted as ``#`` characters (the AST has no comments).
* grid: +1 the launch grid uses ``triton.cdiv``.
* efficiency: +1 any of ``triton.autotune``, ``num_warps``/``num_stages``, ``tl.dot``,
  ``eviction_policy``, ``cache_modifier``, ``tl.multiple_of``/``tl.max_contiguous``.
* penalties: -1 a function over 150 lines; -1 ``torch._inductor`` boilerplate
  (``assert_size_stride``, ``empty_strided_cuda``, ``reinterpret_tensor``, inductor imports).

Bands: 0-1 broken/unparseable, 2-3 messy but works, 4-5 acceptable, 6 good structure,
7-8 very good, 9-10 excellent.

Parsing: compile-time warnings (invalid escape sequences in dataset strings) are silenced
under a lock so that a ``-W error`` environment cannot turn them into syntax errors; the lock
serialises only the parse, which holds the GIL anyway.
"""

from __future__ import annotations

import ast
import re
import threading
import warnings
from dataclasses import dataclass

from kernelbook_lib.text import solution_code

STATIC_JUDGE_NAME = "static-ast-v1"

# --- operation tables ------------------------------------------------------------------------
# Canonical operation name -> intrinsic difficulty level (0-8; 9-10 come from structure).


def _levels(level: int, names: str) -> dict[str, int]:
    return {name: level for name in names.split()}


_FUNCS: dict[str, int] = {
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
_LAYERS: dict[str, str] = {
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

# Namespaces that denote torch (extended by the module's own imports).
_TORCH_ROOTS = frozenset(("torch", "nn", "F", "functional"))
_SKIP_NAMESPACES = frozenset(("init", "utils", "jit", "cuda", "backends", "distributed",
                              "autograd", "testing", "hub", "onnx"))
_BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div",
           ast.FloorDiv: "floor_divide", ast.Mod: "remainder", ast.Pow: "pow",
           ast.MatMult: "matmul", ast.BitAnd: "bitwise_and", ast.BitOr: "bitwise_or",
           ast.BitXor: "bitwise_xor", ast.LShift: "bitwise_and", ast.RShift: "bitwise_and"}
_CONTAINERS = frozenset((ast.List, ast.Tuple, ast.Dict, ast.Set, ast.ListComp, ast.JoinedStr))
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
_SETUP_FUNCS = frozenset(("__init__", "extra_repr", "__repr__", "__str__"))
_IGNORED_FUNCS = frozenset(("get_inputs", "get_init_inputs"))
_MULT_CAP = 64
_COUNT_CAP = 10_000

_TEXT_CALL_RE = re.compile(r"(\.)?\b([A-Za-z_][A-Za-z0-9_]*)\s*\(")

_PARSE_LOCK = threading.Lock()

# Fields that never hold child nodes worth visiting: names, flags, and the expression context /
# operator singletons (``Load()``, ``Add()``), which are inspected through their parent.
_NON_CHILD_FIELDS = frozenset(
    ("ctx", "op", "ops", "id", "attr", "name", "arg", "kind", "level", "module", "type_comment",
     "is_async", "conversion", "lineno", "col_offset", "end_lineno", "end_col_offset", "n", "s")
)
_CHILD_FIELDS: dict[type, tuple[str, ...]] = {ast.Constant: ()}


def _child_fields(node_type: type) -> tuple[str, ...]:
    """The fields of a node type that may hold child nodes (cached per type)."""
    fields = _CHILD_FIELDS.get(node_type)
    if fields is None:
        fields = tuple(f for f in node_type._fields if f not in _NON_CHILD_FIELDS)
        _CHILD_FIELDS[node_type] = fields
    return fields


def _children(node: ast.AST, fields: tuple[str, ...]) -> list[ast.AST]:
    """The child nodes of ``node`` in its ``fields`` (a faster ``ast.iter_child_nodes``)."""
    found: list[ast.AST] = []
    for field in fields:
        value = getattr(node, field, None)
        if value is None:
            continue
        if type(value) is list:
            found.extend(item for item in value if isinstance(item, ast.AST))
        elif isinstance(value, ast.AST):
            found.append(value)
    return found


_EMPTY_MODULE = "empty module code"


def _parse(code: str) -> tuple[ast.Module | None, str]:
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


# --- difficulty ------------------------------------------------------------------------------


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


def _chain(node: ast.expr) -> tuple[str | None, list[str]]:
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


def _is_main_guard(node: ast.If) -> bool:
    test = node.test
    return (
        type(test) is ast.Compare
        and type(test.left) is ast.Name
        and test.left.id == "__name__"
    )


def _is_setup_func(name: str) -> bool:
    return name in _SETUP_FUNCS or name.lstrip("_").startswith(("init", "reset", "weight_init"))


class _ModuleWalker:
    """One explicit-stack walk over a module's AST."""

    def __init__(self, tree: ast.Module) -> None:
        self.ops: dict[str, int] = {}
        self.keepdim = False
        self.units: dict[str, _Unit] = {}
        self.classes = 0
        self.torch_roots = set(_TORCH_ROOTS)
        self.imported: dict[str, str] = {}  # local name -> torch object name
        self.unit_names: set[str] = set()
        # Pre-pass over the top-level statements only (not a walk): imports and unit names,
        # so that resolution never depends on definition order.
        for stmt in tree.body:
            t = type(stmt)
            if t is ast.Import or t is ast.ImportFrom:
                self._import(stmt)
            elif t is ast.ClassDef or t is ast.FunctionDef or t is ast.AsyncFunctionDef:
                if stmt.name not in _IGNORED_FUNCS:
                    self.unit_names.add(stmt.name)
                    self._unit(stmt.name)  # units in definition order
        self._walk(tree)

    # -- imports

    def _import(self, node: ast.Import | ast.ImportFrom) -> None:
        if type(node) is ast.Import:
            for alias in node.names:
                if alias.name == "torch" or alias.name.startswith("torch."):
                    self.torch_roots.add(alias.asname or alias.name.split(".")[0])
            return
        module = node.module or ""
        if module != "torch" and not module.startswith("torch."):
            return
        for alias in node.names:
            local = alias.asname or alias.name
            if alias.name in ("nn", "functional", "linalg", "fft", "special"):
                self.torch_roots.add(local)
            elif alias.name in ("init",):
                continue
            elif alias.name != "*":
                self.imported[local] = alias.name

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
                    if name in _IGNORED_FUNCS:
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
                self._import(node)
                continue
            elif t is ast.Lambda:
                compute = True
            fields = _CHILD_FIELDS.get(t) or _child_fields(t)
            if fields:
                for child in _children(node, fields):
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
        if type(left) in _CONTAINERS or type(right) in _CONTAINERS:
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
            if target is None and name in _LAYERS:
                target = name
            if target is None:
                return None
            return self._resolve(target, node, unit, compute, mult, method=False)
        elif tf is ast.Attribute:
            root, parts = _chain(func)
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
        layer = _LAYERS.get(name)
        if layer is not None:  # layer constructions count everywhere
            self._op(layer, unit, mult)
            return layer
        if not compute:
            return None
        if name not in _FUNCS and name.endswith("_") and name[:-1] in _FUNCS:
            name = name[:-1]  # in-place variant
        if name not in _FUNCS:
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
    """The features of a PyTorch reference module. One parse, one walk; never raises."""
    if not isinstance(python_code, str) or not python_code.strip():
        return _textual_features("", _EMPTY_MODULE)
    tree, error = _parse(python_code)
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
            op = _LAYERS.get(name)
            if op is None and dot and name in _FUNCS:
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


_BAND_NAMES = {
    0: "trivial copy/view",
    1: "elementwise", 2: "elementwise",
    3: "reduction", 4: "reduction",
    5: "moderate", 6: "moderate",
    7: "complex", 8: "complex",
    9: "architecture", 10: "architecture",
}


def _architecture_signals(f: ModuleFeatures) -> tuple[list[str], bool]:
    """Whole-architecture signals (in a fixed order) and whether one of them is strong."""
    signals: list[str] = []
    strong = False
    if f.transformer_layers:
        signals.append(f"{f.transformer_layers} transformer layers")
        strong = strong or f.transformer_layers >= 2
    if f.attention_layers and f.linear_layers >= 2 and f.norm_layers and f.residual_blocks:
        signals.append("transformer-style block")
        strong = strong or f.attention_layers >= 2
    if f.conv_layers >= 6:
        signals.append(f"{f.conv_layers} conv layers")
        strong = strong or f.conv_layers >= 16
    if f.residual_blocks >= 2:
        signals.append(f"{f.residual_blocks} stacked residual blocks")
        strong = strong or f.residual_blocks >= 4
    if f.linear_layers >= 12:
        signals.append(f"{f.linear_layers} linear layers")
    if f.recurrent_layers and (f.attention_layers or f.conv_layers >= 2):
        signals.append("recurrent + attention/conv")
    return signals, strong


def difficulty_of(features: ModuleFeatures) -> tuple[int, str]:
    """The difficulty (0-10) of a module and the rationale part naming what decided it
    (the band name, the operations by level, layer counts and architecture signals; the score
    itself is not repeated in it)."""
    level = _FUNCS
    ops = [(name, n, level.get(name, 1)) for name, n in features.ops]
    peak = max((lvl for _, _, lvl in ops), default=0)

    def count(lo: int, hi: int) -> int:
        return sum(n for _, n, lvl in ops if lo <= lvl <= hi)

    nontrivial = count(1, 10)
    signals, strong = _architecture_signals(features)
    if signals:
        score = 10 if strong or len(signals) >= 2 else 9
    elif peak == 0:
        score = 0
    elif peak <= 2:
        score = max(peak, 2 if nontrivial >= 3 else 1)
    elif peak <= 4:
        combined = count(3, 4) >= 2 or features.keepdim or count(1, 2) >= 2
        score = 4 if peak == 4 or combined else 3
    elif peak <= 6:
        score = 6 if peak == 6 or count(5, 6) >= 2 or nontrivial >= 6 else 5
    else:
        score = 8 if peak == 8 or count(7, 8) >= 2 or count(4, 6) >= 2 else 7

    parts = [_BAND_NAMES[score]]
    if features.parse_error == _EMPTY_MODULE:
        parts.append(_EMPTY_MODULE)
    elif not features.parsed:
        parts.append(
            f"module does not parse: {features.parse_error}; scored from calls recognised in its text"
        )
    if ops:
        ranked = sorted(ops, key=lambda item: (-item[2], item[0]))
        shown = ", ".join(f"{name} x{n}" for name, n, _ in ranked[:8])
        more = f" +{len(ranked) - 8} more" if len(ranked) > 8 else ""
        parts.append(f"ops: {shown}{more}")
    elif features.parse_error != _EMPTY_MODULE:
        parts.append("no compute ops found" if features.parsed else "no recognisable ops")
    layers = [
        (features.conv_layers, "conv"), (features.linear_layers, "linear"),
        (features.attention_layers, "attention"), (features.recurrent_layers, "recurrent"),
        (features.transformer_layers, "transformer"), (features.residual_blocks, "residual"),
    ]
    layer_text = ", ".join(f"{n} {name}" for n, name in layers if n)
    if layer_text:
        where = f" in {features.root}" if features.root else ""
        parts.append(f"layers{where}: {layer_text}")
    if features.keepdim:
        parts.append("keepdim broadcast")
    if signals:
        parts.append("architecture: " + ", ".join(signals))
    return score, "; ".join(parts)


# --- style -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SolutionFeatures:
    """What a Triton solution looks like, from its AST."""

    parsed: bool
    parse_error: str  # "" when it parsed, or "empty solution"
    jit_text: bool  # "triton.jit" appears in the text (used only when it does not parse)
    kernels: int
    memory_ops: int  # tl.load + tl.store
    masked_memory_ops: int
    constexpr_params: tuple[str, ...]  # sorted, distinct
    magic_numbers: int
    names: int  # distinct bound names
    opaque_names: int
    new_class: str  # the first class named ...New with a base class, "" if none
    helpers: int  # functions besides kernels, forward and __init__
    longest_function: int  # lines
    docstrings: int
    comments: int  # '#' characters, an approximation
    lines: int
    cdiv: bool
    efficiency: tuple[str, ...]  # sorted hints found
    inductor: bool  # torch._inductor boilerplate


# One lower-case letter other than the loop indices i/j/k (upper-case single letters are the
# conventional M/N/K/B/C/H/W dimensions), or numbered names as generated by torch inductor.
_OPAQUE_RE = re.compile(
    r"(?:[a-hl-z]|tmp\d+|buf\d+|arg\d+(?:_\d+)?|(?:in_out|in|out)_ptr\d+|[a-zA-Z]\d+(?:_\d+)?)\Z"
)
_INDUCTOR_NAMES = frozenset(("assert_size_stride", "empty_strided_cuda", "reinterpret_tensor"))
_EFFICIENCY_KEYWORDS = frozenset(("num_warps", "num_stages", "eviction_policy", "cache_modifier"))
_EFFICIENCY_CALLS = frozenset(("dot", "multiple_of", "max_contiguous"))


def _decorator_name(node: ast.expr) -> str:
    if type(node) is ast.Call:
        node = node.func
    if type(node) is ast.Attribute:
        return node.attr
    if type(node) is ast.Name:
        return node.id
    return ""


def _is_magic(node: ast.expr) -> bool:
    if type(node) is not ast.Constant or type(node.value) is not int:
        return False
    value = node.value
    return value >= 16 and value & (value - 1) == 0


def _has_docstring(body: list[ast.stmt]) -> bool:
    if not body:
        return False
    first = body[0]
    return type(first) is ast.Expr and type(first.value) is ast.Constant and type(first.value.value) is str


def analyze_solution(answer: str) -> SolutionFeatures:
    """The style features of a Triton solution. One parse, one walk; never raises."""
    code = solution_code(answer) if isinstance(answer, str) else ""
    if not code.strip():
        return _unparsed_solution("empty solution", False)
    tree, error = _parse(code)
    if tree is None:
        return _unparsed_solution(error, "triton.jit" in code)

    kernels = memory_ops = masked = magic = helpers = longest = 0
    docstrings = 1 if _has_docstring(tree.body) else 0
    constexpr: set[str] = set()
    names: set[str] = set()
    new_class = ""
    cdiv = inductor = False
    efficiency: set[str] = set()

    # ``triton.language`` aliases (top-level imports; ``tl`` by convention).
    tl_names = {"tl"}
    for stmt in tree.body:
        if type(stmt) is ast.Import:
            tl_names.update(a.asname for a in stmt.names if a.name == "triton.language" and a.asname)
        elif type(stmt) is ast.ImportFrom and stmt.module == "triton":
            tl_names.update(a.asname or a.name for a in stmt.names if a.name == "language")

    # Stack items: (node, inside a kernel?).
    stack: list[tuple[ast.AST, bool]] = [(stmt, False) for stmt in tree.body]
    push = stack.append
    while stack:
        node, in_kernel = stack.pop()
        t = type(node)
        if t is ast.Call:
            func = node.func
            tf = type(func)
            attr = func.attr if tf is ast.Attribute else func.id if tf is ast.Name else ""
            on_tl = tf is ast.Attribute and type(func.value) is ast.Name and func.value.id in tl_names
            if attr in ("load", "store") and on_tl:
                memory_ops += 1
                # tl.load(ptr, mask, other) / tl.store(ptr, value, mask): positional masks too
                positional_mask = len(node.args) >= (2 if attr == "load" else 3)
                if positional_mask or any(k.arg in ("mask", "boundary_check") for k in node.keywords):
                    masked += 1
            elif attr == "cdiv":
                cdiv = True
                if not in_kernel:  # triton.cdiv(n, 1024): the block size inline in the grid
                    magic += sum(1 for a in node.args if _is_magic(a))
            elif attr in _EFFICIENCY_CALLS and on_tl:
                efficiency.add(f"tl.{attr}")
            elif attr in _INDUCTOR_NAMES:
                inductor = True
            if tf is ast.Subscript and not in_kernel:  # kernel[grid](...) launch
                magic += sum(1 for a in node.args if _is_magic(a))
            for keyword in node.keywords:
                if keyword.arg in _EFFICIENCY_KEYWORDS:
                    efficiency.add(keyword.arg)
        elif t is ast.Constant:
            if in_kernel and _is_magic(node):
                magic += 1
        elif t is ast.Name:
            if type(node.ctx) is ast.Store:
                names.add(node.id)
        elif t is ast.FunctionDef or t is ast.AsyncFunctionDef:
            decorators = [_decorator_name(d) for d in node.decorator_list]
            is_kernel = "jit" in decorators
            if "autotune" in decorators:
                efficiency.add("autotune")
            if is_kernel:
                kernels += 1
            elif node.name not in ("forward", "__init__"):
                helpers += 1
            names.add(node.name)
            args = node.args
            for a in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg):
                if a is None or a.arg in ("self", "cls"):
                    continue
                names.add(a.arg)
                ann = a.annotation
                if ann is not None and _decorator_name(ann) == "constexpr":
                    constexpr.add(a.arg)
            if node.end_lineno is not None:
                longest = max(longest, node.end_lineno - node.lineno + 1)
            if _has_docstring(node.body):
                docstrings += 1
            for stmt in node.body:
                push((stmt, in_kernel or is_kernel))
            for dec in node.decorator_list:
                push((dec, in_kernel))
            continue  # argument defaults and annotations are not walked
        elif t is ast.ClassDef:
            if not new_class and node.name.endswith("New") and node.bases:
                new_class = node.name
            if _has_docstring(node.body):
                docstrings += 1
        elif t is ast.ImportFrom:
            if (node.module or "").startswith("torch._inductor"):
                inductor = True
        elif t is ast.Attribute:
            if node.attr in _INDUCTOR_NAMES:
                inductor = True
        fields = _CHILD_FIELDS.get(t) or _child_fields(t)
        if fields:
            for child in _children(node, fields):
                push((child, in_kernel))

    names.discard("_")
    opaque = sum(1 for name in names if _OPAQUE_RE.match(name))
    return SolutionFeatures(
        parsed=True,
        parse_error="",
        jit_text=False,
        kernels=kernels,
        memory_ops=memory_ops,
        masked_memory_ops=masked,
        constexpr_params=tuple(sorted(constexpr)),
        magic_numbers=magic,
        names=len(names),
        opaque_names=opaque,
        new_class=new_class,
        helpers=helpers,
        longest_function=longest,
        docstrings=docstrings,
        comments=code.count("#"),
        lines=code.count("\n") + 1,
        cdiv=cdiv,
        efficiency=tuple(sorted(efficiency)),
        inductor=inductor,
    )


def _unparsed_solution(error: str, jit_text: bool) -> SolutionFeatures:
    return SolutionFeatures(
        parsed=False, parse_error=error, jit_text=jit_text, kernels=0, memory_ops=0,
        masked_memory_ops=0, constexpr_params=(), magic_numbers=0, names=0, opaque_names=0,
        new_class="", helpers=0, longest_function=0, docstrings=0, comments=0, lines=0,
        cdiv=False, efficiency=(), inductor=False,
    )


def style_from_features(f: SolutionFeatures) -> tuple[int, str]:
    """The style score (0-10) of solution features and the rationale part (the features
    found; the score itself is not repeated in it); see the module docstring."""
    if not f.parsed:
        if f.parse_error == "empty solution":
            return 0, "empty solution"
        score = 1 if f.jit_text else 0
        return score, f"solution does not parse ({f.parse_error})"
    if not f.kernels:
        return 1, "no @triton.jit kernel"

    points = 0
    notes = [f"{f.kernels} kernel{'s' if f.kernels > 1 else ''}"]
    if f.memory_ops:
        if f.masked_memory_ops == f.memory_ops:
            points += 2
        elif f.masked_memory_ops:
            points += 1
        notes.append(f"masked loads/stores {f.masked_memory_ops}/{f.memory_ops}")
    else:
        notes.append("no tl.load/tl.store")
    if f.constexpr_params:
        points += 1
        shown = ", ".join(f.constexpr_params[:3]) + (" ..." if len(f.constexpr_params) > 3 else "")
        notes.append(f"constexpr {shown}")
    else:
        notes.append("no tl.constexpr")
    if f.magic_numbers:
        notes.append(f"{f.magic_numbers} magic numbers")
    else:
        points += 1
        notes.append("no magic numbers")
    ratio = f.opaque_names / f.names if f.names else 0.0
    if ratio <= 0.10:
        points += 2
    elif ratio <= 0.35:
        points += 1
    notes.append(f"opaque names {f.opaque_names}/{f.names}")
    if f.new_class:
        points += 1
        notes.append(f"class {f.new_class}")
    else:
        notes.append("no ...New(nn.Module)")
    if f.helpers and f.longest_function <= 60:
        points += 1
    notes.append(f"{f.helpers} helpers, longest fn {f.longest_function} lines")
    doc_items = f.docstrings + f.comments
    if f.docstrings and doc_items >= max(2, f.lines / 15):
        points += 1
    notes.append(f"{f.docstrings} docstrings, {f.comments} comments / {f.lines} lines")
    if f.cdiv:
        points += 1
        notes.append("triton.cdiv grid")
    if f.efficiency:
        points += 1
        notes.append("efficiency: " + ", ".join(f.efficiency))
    if f.longest_function > 150:
        points -= 1
        notes.append("function over 150 lines")
    if f.inductor:
        points -= 1
        notes.append("inductor boilerplate")
    score = max(2, min(10, points))
    return score, "; ".join(notes)


def style_of(answer: str) -> tuple[int, str]:
    """The style score (0-10) of a Triton solution (the text inside ``<answer>`` tags)."""
    return style_from_features(analyze_solution(answer))


# --- the verdict -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StaticVerdict:
    difficulty: int  # 0-10
    style: int  # 0-10
    rationale: str  # the features found; deterministic


def verdict_rationale(difficulty: int, why_difficulty: str, style: int, why_style: str) -> str:
    """The verdict's rationale from the two parts (for callers that cache difficulty per problem)."""
    return f"difficulty {difficulty}: {why_difficulty}; style {style}: {why_style}"


def judge_static(python_code: str, answer: str) -> StaticVerdict:
    """Difficulty from the PyTorch module and style from the Triton solution; never raises."""
    difficulty, why_difficulty = difficulty_of(analyze_module(python_code))
    style, why_style = style_of(answer)
    return StaticVerdict(
        difficulty=difficulty, style=style, rationale=verdict_rationale(difficulty, why_difficulty, style, why_style)
    )
