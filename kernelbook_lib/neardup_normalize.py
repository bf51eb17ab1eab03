"""The normalised form of a module (``neardup-v2``): its operation graph and its scaffolding.

:func:`normalize` parses a module once with :mod:`ast` (it never executes it) and computes:

1. the **operations** of its forward path (:mod:`kernelbook_lib.neardup_trace`): the graph of
   canonical operations that reaches ``forward``'s outputs, calls into the module's own layers
   and helpers followed, every spelling of an operation one label, written-out definitions
   (GELU, hard-swish, sigmoid, layer norm ...) the operation they define. It is described by
   :func:`describe`: features of every operation node (its label, its operands, all the
   computation below it and above it) and its operation sequence;
2. the **scaffolding** (:mod:`kernelbook_lib.neardup_tokens`, ``neardup-v1``'s tokens): the
   whole module as canonical tokens, and the library calls and operators it uses.

Families compare the operations first (:mod:`kernelbook_lib.neardup`); the scaffolding
weighs little, and is all there is for a module whose forward could not be walked (no
``forward``, code that does not parse, a walk over the size limits).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from kernelbook_lib.neardup_emit import Emitter
from kernelbook_lib.neardup_names import COMMUTATIVE
from kernelbook_lib.neardup_ops import Graph, digest
from kernelbook_lib.neardup_tokens import Unsupported, fallback
from kernelbook_lib.neardup_trace import TraceError, trace

#: Separators inside a form: between tokens and between the form's parts.
TOKEN_SEP, PART_SEP = "\x1f", "\x1e"


@dataclass(frozen=True)
class Normalized:
    """A module's normalised form: its scaffolding ``tokens`` and library ``ops`` (``parsed``:
    from the syntax tree, not the token fallback), and the ``features`` and operation
    ``sequence`` of its forward path (empty, with ``untraced`` saying why, when the forward
    could not be walked)."""

    tokens: list[str]
    ops: list[str]
    parsed: bool
    features: tuple[str, ...] = ()
    sequence: tuple[str, ...] = ()
    untraced: str | None = None

    @property
    def form(self) -> str:
        """Everything the comparison uses, as one string (equal strings: the same form)."""
        return PART_SEP.join((
            TOKEN_SEP.join(self.tokens), TOKEN_SEP.join(sorted(set(self.ops))),
            TOKEN_SEP.join(self.features), " ".join(self.sequence),
        ))  # fmt: skip


def parts(form: str) -> tuple[list[str], list[str], list[str], str]:
    """A form's tokens, operations, graph features and operation sequence."""
    tokens, ops, features, sequence = (form.split(PART_SEP) + ["", "", "", ""])[:4]
    def split(text: str) -> list[str]:
        return text.split(TOKEN_SEP) if text else []

    return split(tokens), split(ops), split(features), sequence


def normalize(code: str) -> Normalized:
    """The normalised form of a module. Never raises on any input text, never executes it."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        tokens, ops = fallback(code)
        return Normalized(tokens, ops, False, untraced="does not parse")
    # The walk first: the emitter rewrites the tree as it goes (it inlines locals).
    features, sequence, untraced = _operations(tree)
    try:
        emitter = Emitter(code, tree)
        tokens, ops, parsed = emitter.module(tree), emitter.ops, True
    except (ValueError, RecursionError, MemoryError, Unsupported):
        (tokens, ops), parsed = fallback(code), False
    return Normalized(tokens, ops, parsed, tuple(features), tuple(sequence), untraced)


def _operations(tree: ast.Module) -> tuple[list[str], list[str], str | None]:
    try:
        graph, outputs = trace(tree)
    except TraceError as exc:
        return [], [], f"not walked: {exc}"
    except (RecursionError, MemoryError) as exc:
        return [], [], f"not walked: {type(exc).__name__}"
    except Exception as exc:  # noqa: BLE001 - a gap in the walker must not stop the stage: it is counted
        return [], [], f"walker error: {type(exc).__name__}"
    features, sequence = describe(graph, outputs)
    if not features:
        return [], [], "no operation reaches an output"
    return features, sequence, None


def normalized_text(code: str) -> str:
    """The normalised form in a readable line: the operation sequence, then the scaffolding and
    its operations, to see why two modules are, or are not, one family."""
    n = normalize(code)
    walked = " ".join(n.sequence) if n.untraced is None else f"({n.untraced})"
    return f"operations: {walked}   | scaffolding: " + " ".join(n.tokens) + "   | ops: " + " ".join(sorted(set(n.ops)))


# --- what a graph is compared by ---------------------------------------------------------------


def _post_order(graph: Graph, outputs: list[int]) -> list[int]:
    """The nodes that reach ``outputs``, operands first."""
    kids = graph.kids
    order: list[int] = []
    seen: set[int] = set()
    for root in outputs:
        if root in seen:
            continue
        stack = [(root, False)]
        while stack:
            node, done = stack.pop()
            if done:
                order.append(node)
                continue
            if node in seen:
                continue
            seen.add(node)
            stack.append((node, True))
            stack.extend((k, False) for k in reversed(kids[node]) if k not in seen)
    return order


def describe(graph: Graph, outputs: list[int]) -> tuple[list[str], list[str]]:
    """The features of the computation that reaches ``outputs`` and its operation sequence
    (post-order: operands first). Leaves (inputs, parameters, constants) are seen through
    their consumers; the constant term of a sum and the constant factor of a product are not
    operands (``x + y + eps`` reads like ``x + y``), while a constant applied on its own is an
    operation (``tanh(x) * bound`` is not ``tanh(x)``: ``scale`` and ``add`` of a constant).

    Per operation node: ``L`` its label; ``E`` its label with its operands' labels (what it is
    applied to); ``U`` a digest of all the computation below it; ``D`` a digest of all the
    computation above it up to the first output (the value the module is for: the others are
    intermediate values it also returns). An operation added, removed or replaced anywhere
    changes the ``U`` of every node above it and the ``D`` of every node below it, however long
    the module; spelling changes none of them. Repeated features stay repeated (a multiset: an
    MLP of depth 2 and of depth 3 differ)."""
    label = graph.label
    order = _post_order(graph, outputs)

    def operands(node: int) -> list[int]:
        if label[node] in ("add", "mul"):  # the constant term or factor of a sum or product is free
            return [k for k in graph.kids[node] if label[k] != "const"]
        return list(graph.kids[node])

    up: dict[int, str] = {}
    sig = graph.sig
    for node in order:
        ks = operands(node)
        if ks == list(graph.kids[node]) and all(up[k] == sig[k] for k in ks):
            up[node] = sig[node]  # nothing below it was passed through: the graph's own digest
            continue
        below = [up[k] for k in ks]
        if label[node] in COMMUTATIVE:
            below.sort()
        up[node] = digest(label[node] + "(" + ",".join(below) + ")")
    main = outputs[0] if outputs else None
    height: dict[int, int] = {}  # the longest path from a leaf
    for node in order:
        height[node] = 1 + max((height[k] for k in operands(node)), default=-1)
    parents: dict[int, list[str]] = {}
    down: dict[int, str] = {}
    depth: dict[int, int] = {}  # the longest path to the first output (-1: off its path)
    for node in reversed(order):  # consumers before their operands
        marks = parents.get(node, [])
        if node == main:
            marks.append("OUT")
            depth[node] = 0
        down[node] = digest("|".join(sorted(marks)))
        commutative = label[node] in COMMUTATIVE
        d = depth.get(node, -1)
        for position, k in enumerate(operands(node)):
            parents.setdefault(k, []).append(f"{label[node]}.{'*' if commutative else position}.{down[node]}")
            if d >= 0:
                depth[k] = max(depth.get(k, -1), d + 1)
    features: list[str] = []
    sequence: list[str] = []
    for node in order:
        if not graph.kids[node]:
            continue
        name = label[node]
        sequence.append(name)
        kinds = [label[k] for k in operands(node)]
        if name in COMMUTATIVE:
            kinds.sort()
        features += (
            "L" + name,
            "E" + name + "(" + ",".join(kinds) + ")",
            f"U{up[node]}@{depth.get(node, -1)}",
            f"D{down[node]}{name}@{height[node]}",
        )
    return features, sequence
