"""The kernel screen's vocabulary and the facts it reads from one walk of a tree.

Part of :mod:`kernelbook_lib.screen` (see its docstring and ``docs/screen.md``). Nothing here
executes or imports the code it reads: trees come from :func:`ast.parse` and every walk uses an
explicit stack.

* The vocabulary: which torch names are glue (allocation, views, casts, shapes), which are
  compute, how a layer class or a call is named as an operation (``conv3d``, ``matmul``), and
  which operations are the same for comparing a solution with its reference.
* :class:`TreeFacts`: what one walk of a module's tree finds, cached on the facts object and
  shared by every question the screen asks about that tree: the imports, the top-level
  functions and classes, the Triton kernels (``@triton.jit`` / ``autotune`` / ``heuristics``
  functions and ``triton.jit(fn)`` objects), module-level constants, and the timing tricks
  (streams, threads, ``_make_subclass``, patched timers) wherever they occur.
"""

from __future__ import annotations

import ast
import builtins
import re

from kernelbook_lib.module_parse import (
    CHILD_FIELDS,
    ImportTable,
    chain,
    child_fields,
    children,
)
from kernelbook_lib.module_vocabulary import LAYER_OPERATIONS, OPERATION_LEVELS

# --- vocabulary ----------------------------------------------------------------------------


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: Fresh tensors: buffers, constants, input-independent values (never compute).
ALLOC_CALLS = _words(
    "empty empty_like empty_strided zeros zeros_like ones ones_like full full_like tensor "
    "as_tensor from_numpy arange linspace logspace eye rand rand_like randn randn_like randint "
    "randint_like randperm empty_strided_cuda empty_strided_cpu scalar_tensor"
)
#: Methods that allocate a fresh tensor.
ALLOC_METHODS = _words("new_empty new_zeros new_ones new_full new_tensor")
#: Views, layout and data movement: the same values, rearranged (glue).
LAYOUT = _words(
    "view reshape permute transpose t contiguous flatten unflatten ravel squeeze unsqueeze expand "
    "expand_as view_as reshape_as movedim moveaxis swapaxes swapdims narrow select as_strided "
    "broadcast_to broadcast_tensors atleast_1d atleast_2d atleast_3d cat concat concatenate stack "
    "hstack vstack dstack column_stack split split_with_sizes tensor_split chunk unbind flip "
    "fliplr flipud roll repeat repeat_interleave tile pad unfold clone detach detach_ "
    "reinterpret_tensor view_as_real view_as_complex resize_ resize_as_ T mT H data"
)
#: dtype / device moves (glue; a cast below the reference's precision is flagged separately).
CASTS = _words(
    "to type type_as float double half bfloat16 int long short bool byte char cpu cuda "
    "pin_memory requires_grad_ share_memory_ record_stream"
)
#: Methods and calls whose result is a Python value: shapes, sizes, pointers, flags.
SCALAR_METHODS = _words(
    "size dim ndimension numel nelement stride item tolist data_ptr element_size is_contiguous "
    "storage_offset get_device numpy untyped_storage storage is_floating_point is_complex "
    "__len__ dtype is_cuda is_cpu"
)
#: In-place fills with a constant or random values: the buffer is not computed by them.
FILL_METHODS = _words("fill_ zero_ normal_ uniform_ random_ bernoulli_ exponential_ geometric_")
#: torch functions that are neither compute nor allocation.
TORCH_PLUMBING = _words(
    "numel is_tensor is_floating_point is_complex broadcast_shapes result_type promote_types "
    "can_cast finfo iinfo get_default_dtype set_default_dtype device Size dtype no_grad "
    "enable_grad inference_mode set_grad_enabled is_grad_enabled manual_seed seed initial_seed "
    "Generator compile set_printoptions get_num_threads set_num_threads is_nonzero "
    "is_inference_mode_enabled set_float32_matmul_precision use_deterministic_algorithms "
    "empty_cache synchronize current_device set_device device_count get_device_name "
    "is_available current_stream default_stream assert_size_stride save load typename "
    "_assert is_same_size equal allclose isclose is_storage"
)
#: Torch namespaces whose calls are never compute (``torch.cuda.synchronize``, ``torch.nn.init``).
PLUMBING_NAMESPACES = _words("cuda backends jit utils distributed testing hub onnx init _dynamo "
                             "profiler compiler _C._dynamo")
#: Compute names beyond the module analyser's vocabulary.
EXTRA_COMPUTE = _words(
    "lgamma digamma polygamma mvlgamma erfcx i0 i0e i1 i1e sinc logaddexp logaddexp2 "
    "logcumsumexp cross kron trace matrix_exp slogdet pinv pinverse lstsq eig eigh eigvals "
    "eigvalsh svdvals matrix_power matrix_rank inv det cholesky_solve lu triangular_solve histc "
    "histogram bincount unique unique_consecutive searchsorted bucketize addmv addr ger "
    "chain_matmul multi_dot vecdot conv_tbc nanmedian quantile nanquantile diff gradient trapz "
    "trapezoid cumulative_trapezoid rsub float_power frexp ldexp nextafter angle logdet "
    "vector_norm matrix_norm index_add index_copy index_fill index_put masked_scatter "
    "scatter_reduce take_along_dim put renorm addmm_ bernoulli multinomial dropout "
    "native_layer_norm native_batch_norm native_group_norm softmax_backward conv "
    "convolution mv dot vdot inner outer einsum tensordot cdist pdist cosine_similarity "
    "pairwise_distance square rsqrt sigmoid tanh relu exp log"
)
_LEVEL_COMPUTE = frozenset(name for name, level in OPERATION_LEVELS.items() if level >= 1)
#: Every name recognised as a compute operation (functions and tensor methods).
COMPUTE = (_LEVEL_COMPUTE | EXTRA_COMPUTE) - LAYOUT - CASTS - ALLOC_CALLS
#: Reductions: over a kernel's partial results they are glue (``partials.sum()``).
REDUCTIONS = _words("sum mean max min amax amin prod norm nansum vector_norm all any")
#: Scalar arithmetic that stays glue over a kernel's partial results (``sqrt(partials.sum())``).
SMALL_GLUE = REDUCTIONS | _words(
    "sqrt rsqrt reciprocal div mul add sub pow clamp clamp_min clamp_max abs neg exp log square "
    "true_divide maximum minimum floor_divide remainder compare gt lt ge le eq ne binary")
#: Names of operations that are the same computation, for comparing with the reference.
_SAME_OP = {
    "mm": "matmul", "bmm": "matmul", "einsum": "matmul", "tensordot": "matmul",
    "baddbmm": "matmul", "addbmm": "matmul", "addmm": "matmul", "linear": "matmul",
    "matmul": "matmul", "mv": "matmul", "dot": "matmul", "inner": "matmul",
    "clip": "clamp", "clamp_min": "clamp", "clamp_max": "clamp",
    "subtract": "sub", "rsub": "sub", "multiply": "mul", "divide": "div", "true_divide": "div",
    "negative": "neg", "absolute": "abs", "concat": "cat", "concatenate": "cat",
    "swish": "silu", "max_pool1d": "max_pool", "max_pool2d": "max_pool", "max_pool3d": "max_pool",
    "avg_pool1d": "avg_pool", "avg_pool2d": "avg_pool", "avg_pool3d": "avg_pool",
    "batch_norm": "batch_norm", "native_batch_norm": "batch_norm",
    "native_layer_norm": "layer_norm", "native_group_norm": "group_norm",
    "convolution": "conv", "conv1d": "conv", "conv2d": "conv", "conv3d": "conv",
    "amax": "max", "amin": "min", "vector_norm": "norm", "linalg_norm": "norm",
}


def same_op(name: str) -> str:
    """The name two spellings of one computation share (``bmm`` and ``matmul``)."""
    return _SAME_OP.get(name, name)


#: torch dtypes below fp32, by the name the flag shows.
LOW_DTYPES = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16", "float8_e4m3fn": "fp8",
              "float8_e5m2": "fp8", "float8_e4m3fnuz": "fp8", "float8_e5m2fnuz": "fp8",
              "float8e4nv": "fp8", "float8e5": "fp8", "float8e4b15": "fp8", "fp8e4nv": "fp8",
              "fp8e5": "fp8"}
#: Binary operators as operations.
BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.FloorDiv: "floor_divide",
          ast.Mod: "remainder", ast.Pow: "pow", ast.MatMult: "matmul", ast.BitAnd: "bitwise_and",
          ast.BitOr: "bitwise_or", ast.BitXor: "bitwise_xor", ast.LShift: "bitwise_left_shift",
          ast.RShift: "bitwise_right_shift"}
COMPARES = {ast.Gt: "gt", ast.GtE: "ge", ast.Lt: "lt", ast.LtE: "le", ast.Eq: "eq", ast.NotEq: "ne"}

_CAMEL_RE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def layer_op(class_name: str) -> str:
    """``nn.Conv3d`` -> ``conv3d``; an unknown layer class by its snake-case name."""
    op = LAYER_OPERATIONS.get(class_name)
    if op is not None:
        return op
    return _CAMEL_RE.sub("_", class_name).lower()


#: ``nn`` containers: calling one calls its layers.
NN_CONTAINERS = _words("Sequential ModuleList ModuleDict")
#: ``nn`` classes that hold values, not layers.
NN_HOLDERS = _words("Parameter ParameterList ParameterDict Buffer UninitializedParameter")
#: nn layers that compute nothing.
NN_NOOP = _words("Identity Flatten Unflatten Dropout Dropout1d Dropout2d Dropout3d AlphaDropout "
                 "FeatureAlphaDropout")


# --- facts of one tree ---------------------------------------------------------------------

_TRITON_DECORATORS = frozenset(("jit", "autotune", "heuristics"))
_BUILTINS = frozenset(dir(builtins)) | {"__file__", "__name__", "__doc__", "__spec__", "__builtins__"}
_TIMING_PATCH_TARGETS = frozenset((
    "torch.cuda.Event", "torch.cuda.Event.elapsed_time", "torch.cuda.Event.record",
    "torch.cuda.synchronize", "torch.cuda.Stream", "time.perf_counter", "time.time",
    "time.perf_counter_ns", "time.monotonic", "time.process_time", "torch.cuda.current_stream",
))
_THREAD_NAMES = frozenset(("threading.Thread", "threading.Timer", "concurrent.futures.ThreadPoolExecutor",
                           "concurrent.futures.ProcessPoolExecutor", "multiprocessing.Process",
                           "multiprocessing.Pool", "_thread.start_new_thread"))
_STREAM_NAMES = frozenset(("torch.cuda.Stream", "torch.cuda.stream", "torch.cuda.set_stream",
                           "torch.cuda.ExternalStream", "torch.Stream"))


class KernelBody:
    """What a kernel's body does: ``computes`` (arithmetic or ``tl`` math on loaded values, not
    only loads, stores, casts and masks), ``writes`` (``data``: it stores values derived from
    loads; ``constant``: it stores only constants or index values; ``none``: it stores nothing),
    its low-precision ``casts`` ``(dtype flag, line)``, its ``params`` in order and ``stored``:
    the parameters its stores and atomics write through (None when unknown: all of them)."""

    __slots__ = ("computes", "writes", "casts", "params", "stored")

    def __init__(self, computes: bool, writes: str, casts: tuple, params: tuple = (),
                 stored: frozenset | None = None) -> None:
        self.computes = computes
        self.writes = writes
        self.casts = casts
        self.params = params
        self.stored = stored


_OPAQUE_KERNEL = KernelBody(True, "data", ())


class ClassInfo:
    """One class of the tree: its methods, bases and what kind of class it is."""

    __slots__ = ("node", "name", "methods", "bases", "is_function", "kernels", "facts")

    def __init__(self, node: ast.ClassDef, facts: TreeFacts) -> None:
        self.node = node
        self.name = node.name
        self.facts = facts
        self.methods: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        self.kernels: set[str] = set()
        for stmt in node.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.methods[stmt.name] = stmt
                if facts.is_kernel_def(stmt):
                    self.kernels.add(stmt.name)
        self.bases = [facts.dotted(b) or "" for b in node.bases]
        self.is_function = any(b.rsplit(".", 1)[-1] == "Function" and "autograd" in facts.resolve(b)
                               or facts.resolve(b) in ("torch.autograd.Function", "Function")
                               for b in self.bases if b)


class TreeFacts:
    """The facts of one module tree, from one walk of it (see the module docstring)."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.imports = ImportTable()
        self.functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        self.classes: dict[str, ClassInfo] = {}
        self.kernels: dict[str, ast.AST] = {}  # name -> def (or the triton.jit(...) call)
        self.kernel_count = 0
        self.constants: dict[str, object] = {}  # module-level names bound to literals
        self.globals_assigned: dict[str, ast.expr] = {}  # other module-level bindings
        self.timing: list[tuple[str, int, str]] = []  # (flag, line, what)
        self.low_precision = False  # any fp16/bf16/fp8 dtype or cast appears (read on references)
        self.order: list[str] = []  # top-level function and class names in definition order
        self.import_failure: tuple[int, str] | None = None  # (line, why) a module-level statement fails
        self._kernel_info: dict[int, KernelBody] = {}
        for stmt in tree.body:  # imports first, so decorators resolve whatever the order
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                self.imports.add(stmt)
        self._walk()

    # -- names

    def dotted(self, node: ast.AST) -> str | None:
        root, parts = chain(node)  # type: ignore[arg-type]
        if root is None:
            return None
        return ".".join((root, *parts)) if parts else root

    def resolve(self, dotted: str) -> str:
        return self.imports.resolve(dotted)

    def is_kernel_def(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
        for dec in node.decorator_list:
            target = dec.func if type(dec) is ast.Call else dec
            name = self.dotted(target)
            if name is None:
                continue
            resolved = self.resolve(name)
            last = resolved.rsplit(".", 1)[-1]
            if last in _TRITON_DECORATORS and (resolved.startswith("triton") or name == last and
                                               self.imports.aliases.get(name, "").startswith("triton")):
                return True
        return False

    def is_triton_jit_call(self, node: ast.AST) -> bool:
        """``triton.jit(fn)`` or ``triton.autotune(...)(fn)``: a kernel object built by a call."""
        if type(node) is not ast.Call:
            return False
        func = node.func
        if type(func) is ast.Call:  # triton.autotune(configs=...)(fn)
            func = func.func
        name = self.dotted(func)
        if name is None:
            return False
        resolved = self.resolve(name)
        return resolved.startswith("triton") and resolved.rsplit(".", 1)[-1] in _TRITON_DECORATORS

    # -- the walk

    def _walk(self) -> None:
        tree = self.tree
        for stmt in tree.body:
            t = type(stmt)
            if t is ast.FunctionDef or t is ast.AsyncFunctionDef:
                self.order.append(stmt.name)
                if self.is_kernel_def(stmt):
                    self.kernels[stmt.name] = stmt
                else:
                    self.functions[stmt.name] = stmt
            elif t is ast.ClassDef:
                self.order.append(stmt.name)
                self.classes[stmt.name] = ClassInfo(stmt, self)
            elif t is ast.Assign or t is ast.AnnAssign:
                self._module_assign(stmt)
            elif t is ast.Try:  # try: import triton; HAS_TRITON = True / except ImportError: ...
                for inner in stmt.body:
                    if type(inner) in (ast.Assign, ast.AnnAssign):
                        self._module_assign(inner)
                    elif type(inner) in (ast.Import, ast.ImportFrom):
                        self.imports.add(inner)
            elif t is ast.If:  # module-level `if HAS_TRITON:` definitions: read the body
                for inner in stmt.body:
                    if type(inner) in (ast.FunctionDef, ast.AsyncFunctionDef) and self.is_kernel_def(inner):
                        self.kernels.setdefault(inner.name, inner)
        # One explicit-stack walk of the whole tree: nested kernels, timing tricks, precision.
        stack: list[ast.AST] = [tree]
        top_kernels = set(map(id, self.kernels.values()))
        kernel_defs = 0
        bound: set[str] = set(self.imports.aliases)
        while stack:
            node = stack.pop()
            t = type(node)
            if t is ast.Name:
                if type(node.ctx) is ast.Store:
                    bound.add(node.id)
                continue
            if t is ast.arg:
                bound.add(node.arg)
                continue
            if t is ast.ClassDef:
                bound.add(node.name)
            elif t is ast.Import or t is ast.ImportFrom:
                bound.update((a.asname or a.name).split(".")[0] for a in node.names)
            if t is ast.FunctionDef or t is ast.AsyncFunctionDef:
                bound.add(node.name)
                if self.is_kernel_def(node):
                    kernel_defs += 1
                    if id(node) not in top_kernels:
                        self.kernels.setdefault(node.name, node)
                if node.name in ("__torch_dispatch__", "__torch_function__"):
                    self.timing.append(("timing:subclass", node.lineno,
                                        f"defines {node.name} (a tensor subclass that can defer work)"))
            elif t is ast.Call:
                self._call_fact(node)
            elif t is ast.Assign or t is ast.AugAssign:
                targets = node.targets if t is ast.Assign else [node.target]
                for target in targets:
                    name = self.dotted(target) if type(target) is ast.Attribute else None
                    if name is not None and self.resolve(name) in _TIMING_PATCH_TARGETS:
                        self.timing.append(("timing:patch", node.lineno, f"assigns {name}"))
            elif t is ast.Attribute:
                if node.attr in LOW_DTYPES:
                    self.low_precision = True
            elif t is ast.Constant and type(node.value) is str and node.value in LOW_DTYPES:
                self.low_precision = True
            fields = CHILD_FIELDS.get(t) or child_fields(t)
            if fields:
                stack.extend(children(node, fields))
        self.kernel_count = kernel_defs + sum(1 for v in self.kernels.values() if type(v) is ast.Call)
        self.import_failure = self._import_failure(bound)

    def _import_failure(self, bound: set[str]) -> tuple[int, str] | None:
        """A module-level expression that fails whenever the file is imported (template debris
        such as a set of a set, or a name the file never binds): nothing the file defines runs."""
        for stmt in self.tree.body:
            if type(stmt) is not ast.Expr or type(stmt.value) is ast.Constant:
                continue
            value = stmt.value
            shown = ast.unparse(value) if type(value) in (ast.Set, ast.Name, ast.Dict) else type(value).__name__
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            for sub in ast.walk(value):
                if type(sub) is ast.Set and any(type(e) in (ast.Set, ast.Dict, ast.List) for e in sub.elts):
                    return stmt.lineno, f"evaluates {shown}, a set of an unhashable value (TypeError)"
                if type(sub) is ast.Name and type(sub.ctx) is ast.Load and sub.id not in bound \
                        and sub.id not in _BUILTINS:
                    return stmt.lineno, f"evaluates {shown}, and the file never defines {sub.id!r} (NameError)"
        return None

    def _module_assign(self, stmt: ast.Assign | ast.AnnAssign) -> None:
        targets = stmt.targets if type(stmt) is ast.Assign else [stmt.target]
        value = stmt.value
        if value is None:
            return
        for target in targets:
            if type(target) is not ast.Name:
                continue
            name = target.id
            if type(value) is ast.Constant:
                self.constants[name] = value.value
            elif self.is_triton_jit_call(value):
                self.kernels[name] = value
            else:
                self.globals_assigned[name] = value

    def _call_fact(self, node: ast.Call) -> None:
        name = self.dotted(node.func)
        if name is None:
            return
        resolved = self.resolve(name)
        line = node.lineno
        if resolved in _STREAM_NAMES or resolved.endswith(".cuda.Stream"):
            self.timing.append(("timing:stream", line, f"calls {name} (a non-default CUDA stream)"))
        elif resolved in _THREAD_NAMES:
            self.timing.append(("timing:thread", line, f"calls {name}"))
        elif resolved.endswith("._make_subclass") or name.endswith("_make_subclass"):
            self.timing.append(("timing:subclass", line, f"calls {name} (a lazy tensor subclass)"))
        elif resolved == "setattr" and len(node.args) >= 2:
            owner = self.dotted(node.args[0])
            attr = node.args[1]
            if owner is not None and type(attr) is ast.Constant and isinstance(attr.value, str):
                if f"{self.resolve(owner)}.{attr.value}" in _TIMING_PATCH_TARGETS:
                    self.timing.append(("timing:patch", line, f"setattr patches {owner}.{attr.value}"))
        elif resolved.rsplit(".", 1)[-1] in ("autocast",) and ("amp" in resolved or resolved.startswith("torch")):
            self.low_precision = True

    # -- kernels

    def kernel_body(self, name: str) -> KernelBody:
        """What a kernel's body does (see :class:`KernelBody`); cached per kernel."""
        node = self.kernels.get(name)
        if node is None or type(node) is ast.Call:
            return _OPAQUE_KERNEL
        cached = self._kernel_info.get(id(node))
        if cached is not None:
            return cached
        args = node.args  # type: ignore[attr-defined]
        pointers = {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)
                    if not (a.annotation is not None and "constexpr" in (self.dotted(a.annotation) or ""))}
        # (targets, value, augmented, the tests of the ifs/whiles around it)
        assigns: list[tuple[list[ast.expr], ast.expr, bool, tuple]] = []
        casts: list[tuple[str, int]] = []
        stores: list[tuple[ast.expr | None, ast.expr | None, tuple]] = []  # (pointer, value, tests)
        computes = atomics = False
        # Popped in source order, so assignments are collected as they are written.
        stack: list[tuple[ast.AST, tuple]] = [(stmt, ()) for stmt in reversed(node.body)]  # type: ignore[attr-defined]
        while stack:
            sub, tests = stack.pop()
            ts = type(sub)
            if ts is ast.Assign:
                assigns.append((sub.targets, sub.value, False, tests))
                for target in sub.targets:  # `out_ptr[i] = v`: a pointer indexed like an array
                    if type(target) is ast.Subscript and type(target.value) is ast.Name and target.value.id in pointers:
                        stores.append((target, sub.value, tests))
            elif ts is ast.AugAssign:
                assigns.append(([sub.target], sub.value, True, tests))
            elif ts is ast.AnnAssign and sub.value is not None:
                assigns.append(([sub.target], sub.value, False, tests))
            elif ts is ast.Call:
                low = self._low_cast(sub)
                if low:
                    casts.append((low, sub.lineno))
                last = self._last(sub.func)
                if last == "store":
                    keywords = {k.arg: k.value for k in sub.keywords}
                    pointer = sub.args[0] if sub.args else keywords.get("pointer")
                    value = sub.args[1] if len(sub.args) >= 2 else keywords.get("value")
                    stores.append((pointer, value, tests))
                elif last.startswith("atomic_"):
                    atomics = computes = True  # accumulating into memory is a reduction
                    if sub.args:
                        stores.append((sub.args[0], None, tests))
                elif self._on_tl(sub.func) and last not in self._MOVES and last not in self._INDEXING:
                    computes = True  # tl.dot, tl.exp, tl.sum, libdevice...
            if ts is ast.If or ts is ast.While:
                inner = (*tests, sub.test)
                stack.extend((s, tests) for s in reversed(sub.orelse))
                stack.extend((s, inner) for s in reversed(sub.body))
                stack.append((sub.test, tests))
                continue
            fields = CHILD_FIELDS.get(ts) or child_fields(ts)
            if fields:
                found = children(sub, fields)
                found.reverse()
                stack.extend((c, tests) for c in found)

        info: dict[int, tuple[frozenset[str], bool]] = {}

        def facts_of(expr: ast.AST) -> tuple[frozenset[str], bool]:
            """The names an expression reads and whether it loads (one walk per expression)."""
            found = info.get(id(expr))
            if found is None:
                names = frozenset(n.id for n in ast.walk(expr) if type(n) is ast.Name)
                found = info[id(expr)] = (names, self._loads(expr, pointers))
            return found

        def depends(expr: ast.AST | None, tests: tuple) -> bool:
            """On loaded data: through its operands, or through a branch on data around it."""
            for part in (expr, *tests):
                if part is not None:
                    names, loads = facts_of(part)
                    if loads or not names.isdisjoint(data):
                        return True
            return False

        data: set[str] = set()
        targets_of = [frozenset(n.id for t in targets for n in ast.walk(t) if type(n) is ast.Name)
                      for targets, _v, _a, _t in assigns]
        for _ in range(len(assigns) + 1):  # to a fixed point: loops use names defined below them
            size = len(data)
            for (_targets, value, _aug, tests), names in zip(assigns, targets_of):
                if not names <= data and depends(value, tests):
                    data.update(names)
            if len(data) == size:
                break
        if not computes:
            computes = any(not facts_of(value)[0].isdisjoint(data) and (aug or self._computes(value, data))
                           for _targets, value, aug, _tests in assigns) or any(
                v is not None and not facts_of(v)[0].isdisjoint(data) and self._computes(v, data)
                for _p, v, _t in stores)
        # Data stored, or stored at addresses computed from data (a scatter, `index_fill`).
        stored_data = atomics or any(depends(v, tests) or depends(p, ()) for p, v, tests in stores)
        writes = "data" if stored_data else "constant" if stores else "none"
        # The parameters written through: those a store's address is computed from.
        derived: dict[str, set[str]] = {p: {p} for p in pointers}
        for _ in range(len(assigns) + 1):
            changed = False
            for (_targets, value, _aug, _tests), names in zip(assigns, targets_of):
                roots = set().union(*(derived.get(n, ()) for n in facts_of(value)[0]))
                for name in names:
                    if roots - derived.setdefault(name, set()):
                        derived[name] |= roots
                        changed = True
            if not changed:
                break
        stored: set[str] = set()
        for pointer, _value, _tests in stores:
            if pointer is not None:
                for name in facts_of(pointer)[0]:
                    stored |= derived.get(name, set()) & pointers
        ordered = tuple(a.arg for a in (*args.posonlyargs, *args.args))
        result = KernelBody(computes, writes, tuple(casts), ordered, frozenset(stored))
        self._kernel_info[id(node)] = result
        return result

    def _on_tl(self, func: ast.AST) -> bool:
        name = self.dotted(func)
        if name is None:
            return False
        resolved = self.resolve(name)
        return resolved.startswith(("triton.language", "triton.math")) or ".libdevice." in resolved \
            or name.startswith(("tl.", "libdevice.", "tl_math."))

    _INDEXING = frozenset(("store", "program_id", "num_programs", "arange", "cdiv", "multiple_of",
                           "max_contiguous", "static_range", "range", "constexpr", "static_assert",
                           "device_assert", "static_print", "device_print", "debug_barrier", "zeros",
                           "zeros_like", "full", "full_like", "make_block_ptr", "advance", "load",
                           "swizzle2d", "assume", "num_warps", "warp_id", "ones", "ones_like"))

    def _last(self, func: ast.AST) -> str:
        if type(func) is ast.Attribute:
            return func.attr
        if type(func) is ast.Name:
            return self.resolve(func.id).rsplit(".", 1)[-1]
        return ""

    def _loads(self, node: ast.AST, pointers: set[str] = frozenset()) -> bool:  # type: ignore[assignment]
        """A load: ``tl.load``, an atomic, or a pointer parameter indexed like an array."""
        for s in ast.walk(node):
            if type(s) is ast.Call and self._last(s.func) in ("load", "atomic_add", "atomic_max", "atomic_min",
                                                              "atomic_xchg"):
                return True
            if type(s) is ast.Subscript and type(s.value) is ast.Name and s.value.id in pointers:
                return True
        return False

    @staticmethod
    def _touches(node: ast.AST, data: set[str]) -> bool:
        return bool(data) and any(type(s) is ast.Name and s.id in data for s in ast.walk(node))

    _MOVES = frozenset(("load", "to", "cast", "multiple_of", "max_contiguous", "reshape", "view",
                        "trans", "permute", "broadcast_to", "expand_dims", "where", "zeros", "zeros_like",
                        "full", "arange", "program_id", "num_programs", "cdiv", "static_range", "range",
                        "advance", "make_block_ptr", "split", "join", "interleave"))

    def _computes(self, node: ast.AST, data: set[str]) -> bool:
        """Whether ``node`` computes on loaded data: arithmetic, comparisons or a ``tl`` operation
        other than loads, casts, layout and masking (``tl.where(mask, x, 0)``)."""
        for sub in ast.walk(node):
            ts = type(sub)
            if ts is ast.BinOp:
                if self._touches(sub.left, data) or self._touches(sub.right, data):
                    return True
            elif ts is ast.UnaryOp:
                if type(sub.op) is not ast.Not and self._touches(sub.operand, data):
                    return True
            elif ts is ast.Compare:
                if self._touches(sub, data):
                    return True
            elif ts is ast.Call:
                if self._last(sub.func) not in self._MOVES and self._touches(sub, data):
                    return True
        return False

    def _low_dtype(self, node: ast.AST) -> str:
        if type(node) is ast.Attribute and node.attr in LOW_DTYPES:
            return LOW_DTYPES[node.attr]
        if type(node) is ast.Constant and type(node.value) is str and node.value in LOW_DTYPES:
            return LOW_DTYPES[node.value]
        return ""

    def _low_cast(self, node: ast.Call) -> str:
        func = node.func
        if type(func) is ast.Attribute and func.attr in ("to", "cast"):
            args = node.args[1:] if func.attr == "cast" and self.dotted(func.value) in ("tl", "triton.language") else node.args
            for arg in args[:1]:
                low = self._low_dtype(arg)
                if low:
                    return low
        return ""
