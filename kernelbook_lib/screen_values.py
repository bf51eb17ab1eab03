"""The kernel screen's abstract values: the kinds of value the walker tracks, and its frames.

Part of :mod:`kernelbook_lib.screen` (the walker is :mod:`kernelbook_lib.screen_walk`). A value
is a :class:`V` of one kind: a tensor (``T``: where it comes from, which buffers it is or views,
whether it is a kernel's small partial result), a Python value (``S``; ``C`` when a literal is
known), ``NONE``, a Triton kernel or a launcher (``kernel[grid]``), a function, class or object
of the module, an ``nn`` layer (with the operations it computes), a namespace (``MOD``: ``torch``,
``F``, ``triton``), a list, a dict (``persistent`` when it outlives the call), a lambda, the
reference module (``REF``), ``super()`` or a Triton decorator.

Where a value comes from is its ``src``. Two matter for what counts as compute:

* :data:`PARAM`: derived only from the module's parameters, buffers and constants (``self.w``,
  ``self.bn.running_var``, an ``nn.Parameter``, Python numbers), never from the entry point's
  inputs or a kernel's output. PyTorch arithmetic whose operands are all of this kind is
  parameter preparation (``bn.weight / torch.sqrt(bn.running_var + bn.eps)``, ``self.w.t() * 2``),
  glue wherever it happens, and its result is again of this kind.
* :data:`DATA`: a Python value read from tensor data that is not only parameters
  (``partials.sum().item()``, ``float(t)``), so that arithmetic with it stays compute.
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kernelbook_lib.screen_facts import ClassInfo

# Value kinds
T, S, C, NONE, KERNEL, LAUNCHER, FUNC, CLASS, OBJ, LAYER, MOD, LIST, DICT, LAMBDA, REF, SUPER, DECO, UNK = (
    "T", "S", "C", "NONE", "KERNEL", "LAUNCHER", "FUNC", "CLASS", "OBJ", "LAYER", "MOD", "LIST", "DICT",
    "LAMBDA", "REF", "SUPER", "DECO", "UNK")
DEFAULT: tuple = ()
#: ``src`` of a tensor or Python value derived only from parameters, buffers and constants.
PARAM = "param"
#: ``src`` of a Python value read from tensor data not only of parameters (``.item()``).
DATA = "data"
#: Buffer kinds (``Walker.buffers``) a parameter-derived value may be or view: parameters and
#: buffers of the module, and fresh allocations (as long as no kernel wrote them).
PARAM_BUFFERS = frozenset(("param", "alloc"))
MAX_CALL_DEPTH = 12
MAX_NESTING = 120  # nested expressions / blocks followed before the walker stops descending
MAX_STEPS = 60_000
INIT_NAMES = frozenset(("__init__", "reset_parameters", "_reset_parameters", "init_weights", "_init_weights"))
UNMISTAKABLE = frozenset(("matmul", "mm", "bmm", "softmax", "log_softmax", "logsumexp", "cumsum", "cumprod"))
SCALAR_TYPES = frozenset(("int", "float", "bool", "str", "tuple", "list", "Tuple", "List", "Sequence",
                           "Size", "dtype", "device", "complex", "Number", "Literal", "Dict", "dict"))
#: Parameter names that name a setting, never a tensor (an entry point's unannotated parameters
#: are otherwise taken for input tensors).
SETTING_NAMES = frozenset((
    "dim", "dims", "axis", "axes", "dim0", "dim1", "dim2", "keepdim", "dtype", "device", "eps", "reduction",
    "inplace", "training", "approximate", "mode", "kernel_size", "stride", "padding", "dilation", "groups",
    "output_size", "normalized_shape", "num_groups", "return_indices", "ceil_mode", "rounding_mode",
    "align_corners", "scale_factor", "unbiased", "correction", "descending", "largest", "sorted", "momentum",
    "negative_slope", "output_ratio", "output_padding", "count_include_pad", "divisor_override", "layout",
    "memory_format", "requires_grad", "pin_memory", "non_blocking", "copy", "diagonal", "offset",
))
EXCEPTIONS_FOR_IMPORTS = frozenset(("ImportError", "ModuleNotFoundError"))
INDUCTOR_GLUE = frozenset(("grid", "reinterpret_tensor", "empty_strided", "assert_size_stride", "get_raw_stream",
                            "grid_combo_kernels", "cooperative_reduction_grid", "split_scan_grid",
                            "_empty_strided_cuda", "empty_strided_cuda", "_cuda_getCurrentRawStream",
                            "start_graph", "end_graph", "_DeviceGuard", "set_device", "async_compile",
                            "AsyncCompile", "maybe_profile", "delete", "alloc_from_pool"))


class V:
    """An abstract value. ``allocs``: the buffers (allocations and inputs) the value is or views;
    ``small``: a kernel's small partial results or glue derived from them."""

    __slots__ = ("k", "ref", "allocs", "small", "src", "items", "attrs", "maybe_none", "const")

    def __init__(self, k: str, ref: Any = None, allocs: frozenset = frozenset(), small: bool = False,
                 src: str = "", items: list | None = None, const: Any = None) -> None:
        self.k = k
        self.ref = ref
        self.allocs = allocs
        self.small = small
        self.src = src
        self.items = items
        self.attrs: dict[str, V] | None = None
        self.maybe_none: set[str] | None = None
        self.const = const


UNKNOWN = V(UNK)
SCALAR = V(S)
NONE_VALUE = V(NONE)


def tensor_value(src: str = "computed", allocs: frozenset = frozenset(), small: bool = False) -> V:
    """A tensor value (``src``: ``input``, ``alloc``, ``param``, ``computed``, ``state``, ``cached``)."""
    return V(T, src=src, allocs=allocs, small=small)


def joint_src(tensors: list[V]) -> str:
    """The ``src`` of a tensor made of ``tensors`` (``torch.cat``, ``broadcast_tensors``): theirs
    when they agree, else the first that is neither a fresh buffer nor a parameter, then a fresh
    buffer: a parameter joined with an input is neither parameter-derived nor fresh."""
    srcs = [v.src for v in tensors]
    return next((s for s in srcs if s not in ("alloc", PARAM)), "alloc" if "alloc" in srcs else srcs[0])


class Frame:
    """One call being walked: its names, its class and ``self``, what it returned (with the
    context of each ``return``), the frame it was defined in (closures), and whether it is
    set-up code (``__init__``: nothing it does is an event)."""

    __slots__ = ("env", "name", "cls", "self_v", "returns", "closure", "init", "pending")

    def __init__(self, name: str, cls: ClassInfo | None = None, self_v: V | None = None,
                 closure: Frame | None = None, init: bool = False) -> None:
        self.env: dict[str, V] = {}
        self.name = name
        self.cls = cls
        self.self_v = self_v
        self.returns: list[tuple[tuple, V, ast.AST]] = []
        self.closure = closure
        self.init = init
        # (first event, end, context, launches so far): early returns without a kernel
        self.pending: list[tuple[int, int, tuple, int]] = []


class Stop(Exception):
    """The step budget is spent: the walk ends where it is."""


def fold(op: ast.operator, a: Any, b: Any) -> Any:
    """``a op b`` for two literals (raises on anything else: the caller keeps an unknown value)."""
    t = type(op)
    if t is ast.Add:
        return a + b
    if t is ast.Sub:
        return a - b
    if t is ast.Mult:
        if isinstance(a, (str, list, tuple, bytes)) or isinstance(b, (str, list, tuple, bytes)):
            raise ValueError("no sequence repetition")
        return a * b
    if t is ast.FloorDiv:
        return a // b
    if t is ast.Div:
        return a / b
    if t is ast.Mod and not isinstance(a, str):
        return a % b
    raise ValueError("not folded")

