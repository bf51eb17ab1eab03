"""The offline static judge: a deterministic, AST-based stand-in for the LLM judge.

Dataset code is untrusted: it is only ever parsed with :func:`ast.parse`, never executed,
imported or evaluated. Every public function here returns a verdict for any input (syntax
errors, null bytes, code nested too deeply for the parser, empty strings); it never raises.
Each source is parsed once and walked once, with an explicit stack (no recursion), so deeply
nested trees cannot exhaust the interpreter's stack.

Difficulty (0-10): what the PyTorch reference module does
==========================================================

:func:`analyze_module` (in :mod:`kernelbook_lib.module_judge_facts`, on the reading of
:mod:`kernelbook_lib.module_parse` that the template prompt generator shares) collects the
operations the module performs: ``torch.*`` / ``F.*`` calls, ``nn.*`` layers built anywhere,
tensor methods (``x.sum(1)``), and the operators ``+ - * / ** @`` and comparisons in compute
code. Each operation has an intrinsic level (the tables ``OPERATION_LEVELS``/``LAYER_OPERATIONS``
of :mod:`kernelbook_lib.module_vocabulary`). In ``__init__`` and other set-up methods
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

Parsing is :func:`kernelbook_lib.module_parse.parse_code` (compile-time warnings silenced,
so a ``-W error`` environment cannot turn them into syntax errors).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from kernelbook_lib.module_judge_facts import EMPTY_MODULE, ModuleFeatures, analyze_module
from kernelbook_lib.module_parse import CHILD_FIELDS, child_fields, children, parse_code
from kernelbook_lib.module_vocabulary import OPERATION_LEVELS
from kernelbook_lib.text import solution_code

__all__ = [
    "STATIC_JUDGE_NAME", "ModuleFeatures", "SolutionFeatures", "StaticVerdict", "analyze_module",
    "analyze_solution", "difficulty_of", "judge_static", "style_from_features", "style_of",
    "verdict_rationale",
]

STATIC_JUDGE_NAME = "static-ast-v1"

# --- difficulty ------------------------------------------------------------------------------

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
    level = OPERATION_LEVELS
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
    if features.parse_error == EMPTY_MODULE:
        parts.append(EMPTY_MODULE)
    elif not features.parsed:
        parts.append(
            f"module does not parse: {features.parse_error}; scored from calls recognised in its text"
        )
    if ops:
        ranked = sorted(ops, key=lambda item: (-item[2], item[0]))
        shown = ", ".join(f"{name} x{n}" for name, n, _ in ranked[:8])
        more = f" +{len(ranked) - 8} more" if len(ranked) > 8 else ""
        parts.append(f"ops: {shown}{more}")
    elif features.parse_error != EMPTY_MODULE:
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


def analyze_solution(answer: str, tree: ast.Module | None = None) -> SolutionFeatures:
    """The style features of a Triton solution. One parse, one walk; never raises.

    ``tree``: the solution's code already parsed (the kernel screen parses it first and shares
    its tree, so a row is parsed once)."""
    code = solution_code(answer) if isinstance(answer, str) else ""
    if not code.strip():
        return _unparsed_solution("empty solution", False)
    error = ""
    if tree is None:
        tree, error = parse_code(code)
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
        fields = CHILD_FIELDS.get(t) or child_fields(t)
        if fields:
            for child in children(node, fields):
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


#: The highest style a solution flagged by the kernel screen can get (``partial``, ``fallback``,
#: ``library``...): a solution that leaves work to PyTorch is not "very good" structure.
FLAGGED_STYLE_CAP = 6


def style_from_features(f: SolutionFeatures, screen_flags: tuple[str, ...] | list[str] = ()) -> tuple[int, str]:
    """The style score (0-10) of solution features and the rationale part (the features
    found; the score itself is not repeated in it); see the module docstring. ``screen_flags``:
    the kernel screen's flags for the solution; a flagged solution gets at most
    :data:`FLAGGED_STYLE_CAP`."""
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
    if screen_flags:
        notes.append(f"kernel screen: {', '.join(screen_flags)} (style at most {FLAGGED_STYLE_CAP})")
        score = min(score, FLAGGED_STYLE_CAP)
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
