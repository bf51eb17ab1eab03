"""The vocabulary of the operation graph (``neardup-v2``): which calls are operations, their
canonical labels (one per operation, whatever its spelling), and the constant operand.

:func:`canonical_name` lower-cases a name and drops its underscores and its in-place suffix, so the
functional, module, method and in-place spellings of one operation meet (``F.leaky_relu``,
``nn.LeakyReLU``, ``x.leaky_relu_()`` are ``leakyrelu``); :data:`ALIASES` joins the remaining
spellings (``multiply`` and ``mul``, ``nn.BCEWithLogitsLoss`` and
``F.binary_cross_entropy_with_logits``).
"""

from __future__ import annotations

import re

#: Not operations: layout, dtype, device and autograd bookkeeping (``x.view(...)`` is ``x``).
IDENTITY_NAMES = frozenset(
    "contiguous float double half bfloat16 long int bool byte short char to type typeas cuda cpu detach clone "
    "requiresgrad view viewas reshape reshapeas flatten unflatten squeeze unsqueeze expand expandas "
    "broadcastto permute transpose t swapaxes swapdims movedim repeat tile atleast1d atleast2d atleast3d "
    "pinmemory coalesce identity dropoutnone data align alignas asstrided numpy tolist squeezedim "
    "contiguousformat requiresgrad retaingrad variable".split()
)
#: Layout changes: operations only in a module that does nothing else (a pixel shuffle written
#: with ``view`` and ``permute``), see :func:`kernelbook_lib.neardup_trace.trace`.
LAYOUT_NAMES = frozenset(
    "view viewas reshape reshapeas flatten unflatten squeeze unsqueeze expand expandas broadcastto permute "
    "transpose t swapaxes swapdims movedim repeat tile".split()
)
#: Read a tensor's metadata: a constant, not an operation.
META_NAMES = frozenset(
    "size dim numel nelement ndimension getdevice iscontiguous stride elementsize isfloatingpoint "
    "iscuda len shape dtype device ndim item".split()
)
#: Create a tensor from nothing but sizes: a constant (``zeros``/``ones`` with a known value).
CREATION_NAMES = frozenset(
    "zeros ones full empty tensor Tensor floattensor longtensor bytetensor inttensor doubletensor booltensor "
    "astensor fromnumpy zeroslike oneslike fulllike emptylike newzeros newones newfull newempty newtensor "
    "arange linspace logspace eye trilindices triuindices tensortype new zero fill".split()
)
RANDOM_NAMES = frozenset("rand randn randint randlike randnlike randintlike randperm bernoulli normal multinomial "
                         "uniform exponential geometric lognormal cauchy randomsample".split())  # fmt: skip
#: Spellings of one operation (after :func:`canonical_name` lower-cases and drops underscores).
ALIASES = {
    "multiply": "mul", "subtract": "sub", "divide": "div", "truedivide": "div", "absolute": "abs",
    "clip": "clamp", "concat": "cat", "concatenate": "cat", "stack": "cat", "hstack": "cat", "vstack": "cat",
    "swish": "silu", "mm": "matmul", "bmm": "matmul", "mv": "matmul", "dot": "matmul", "inner": "matmul",
    "negative": "neg", "arccos": "acos", "arcsin": "asin", "arctan": "atan",
    "fmax": "maximum", "fmin": "minimum", "greater": "gt", "less": "lt", "greaterequal": "ge", "lessequal": "le",
    "equal": "eq", "notequal": "ne", "logsoftmax": "logsoftmax", "linalgnorm": "norm", "vectornorm": "norm",
    "frobeniusnorm": "norm", "matrixnorm": "norm", "bcewithlogitsloss": "bcewithlogits",
    "binarycrossentropywithlogits": "bcewithlogits", "bceloss": "bce", "binarycrossentropy": "bce",
    "crossentropyloss": "crossentropy", "nllloss": "nll", "nllloss2d": "nll", "kldivloss": "kldiv",
    "mseloss": "mse", "l1loss": "l1", "smoothl1loss": "smoothl1", "huberloss": "huber", "upsample": "interpolate",
    "upsamplingnearest2d": "interpolate", "upsamplingbilinear2d": "interpolate:bilinear",
    "batchnorm1d": "batchnorm", "batchnorm2d": "batchnorm", "batchnorm3d": "batchnorm", "syncbatchnorm": "batchnorm",
    "instancenorm1d": "instancenorm", "instancenorm2d": "instancenorm", "instancenorm3d": "instancenorm",
    "dropout1d": "dropout", "dropout2d": "dropout", "dropout3d": "dropout", "alphadropout": "dropout",
    "featurealphadropout": "dropout", "zeropad2d": "pad", "constantpad1d": "pad", "constantpad2d": "pad",
    "constantpad3d": "pad", "reflectionpad1d": "pad:reflect", "reflectionpad2d": "pad:reflect",
    "replicationpad1d": "pad:replicate", "replicationpad2d": "pad:replicate", "replicationpad3d": "pad:replicate",
    "cosinesimilarity": "cosinesimilarity", "pairwisedistance": "pairwisedistance", "logsigmoid": "logsigmoid",
    "softmax2d": "softmax", "hardtanh": "hardtanh",
    "multiheadattention": "multiheadattention", "erfinv": "erfinv", "expm1": "expm1", "powc": "pow",
    "sqrtm": "sqrt", "logaddexp": "logaddexp", "einsum": "einsum", "cdist": "cdist", "absolutevalue": "abs",
    "ge": "ge", "gt": "gt", "le": "le", "lt": "lt", "eq": "eq", "ne": "ne", "bitwisenot": "not",
    "logicalnot": "not", "logicaland": "and", "logicalor": "or", "bitwiseand": "and", "bitwiseor": "or",
    "addmm": "addmm", "matmul": "matmul", "maximum": "maximum", "minimum": "minimum",
}  # fmt: skip
#: Operations whose operands commute (their order is free).
COMMUTATIVE = frozenset({"add", "mul", "maximum", "minimum", "cat", "eq", "ne", "and", "or", "mse", "l1", "phi"})
#: Keyword arguments whose (identifier) string value selects another operation, and their
#: defaults (left out: ``reduction='mean'`` is the default ``reduction``).
SELECTING_KEYWORDS = {"reduction": "mean", "mode": "nearest", "nonlinearity": None, "norm_type": None, "padding_mode": "zeros"}

_CAMEL = re.compile(r"_+")


_CANONICAL: dict[str, str] = {}


def canonical_name(name: str) -> str:
    """One label for the spellings of an operation: lower case, without underscores and without
    the in-place suffix (``leaky_relu_`` and ``LeakyReLU`` are ``leakyrelu``), then
    :data:`ALIASES`."""
    found = _CANONICAL.get(name)
    if found is None:
        low = _CAMEL.sub("", name.rstrip("_")).lower()
        found = ALIASES.get(low, low)
        if len(_CANONICAL) < 100_000:
            _CANONICAL[name] = found
    return found


class Const:
    """A constant operand: a number (``value``, None when not known statically), a string, a
    bool or None. Never a node: it becomes the leaf ``const`` only where it is an operand."""

    __slots__ = ("value",)

    def __init__(self, value: object = None) -> None:
        self.value = value

    def number(self) -> float | None:
        v = self.value
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


UNKNOWN = Const(None)
ZERO, ONE = Const(0), Const(1)
