"""The kernel screen: is a rollout's solution a Triton kernel for its task?

A rollout's reward says its outputs matched in the eval harness; it does not say that the work
was done in Triton. The screen reads the solution (and its PyTorch reference) with :mod:`ast`,
never executing or importing either, and decides:

* **reject** (one kind, the strongest evidence): ``no_triton`` (no ``@triton.jit`` kernel),
  ``not_launched`` (kernels defined, none launched from the entry point), ``default_path_torch``
  (a kernel runs only off the default path: in eval mode, behind a flag ``__init__`` leaves off),
  ``torch_computes_kernel_copies`` (PyTorch computes every operation of the reference and the
  kernel only copies, casts or adds what the reference does not have), ``try_fallback``
  (PyTorch computes in the handler of a ``try`` around a launch), ``reference_bypass`` (the
  reference module subclassed, built or called), ``cached_output`` (an output read back from a
  cache that outlives the call), ``constant_output`` (the result is a buffer no launched kernel
  writes, a constant, or an input returned unchanged), ``unparsable``;
* **kept with flags**: ``partial:<ops>`` (operations PyTorch still computes on the default path,
  named as the reference names them), ``fallback:device`` (a non-CUDA branch computes with
  PyTorch), ``library:<name>`` (``extern_kernels``, ``triton.ops``, Inductor helpers, aten),
  ``precision:<dtype>`` (casts below the reference's fp32), ``timing:<what>`` (streams, threads,
  tensor subclasses, patched timers);
* **kept clean** otherwise.

How: :mod:`kernelbook_lib.screen_facts` reads each tree once (kernels, classes, imports, timing
tricks); :mod:`kernelbook_lib.screen_walk` follows what the entry point executes, with the
context of every event (default path or which off-default branch). The reference's operations
come from the same walker, cached per reference text. ``docs/screen.md`` has the design, the
measured agreement with hand labels and what the screen cannot see.
"""

from __future__ import annotations

import ast
import threading
from collections import OrderedDict
from dataclasses import dataclass

from kernelbook_lib.module_parse import parse_code
from kernelbook_lib.screen_facts import ClassInfo, TreeFacts, same_op
from kernelbook_lib.screen_values import PARAM
from kernelbook_lib.screen_walk import C, DEFAULT, LIST, MAX_STEPS, NONE, T, Frame, V, Walker

SCREEN_VERSION = "screen-v1"
REJECT_KINDS = ("no_triton", "not_launched", "default_path_torch", "torch_computes_kernel_copies",
                "try_fallback", "reference_bypass", "cached_output", "constant_output", "unparsable")
#: The order in which rejections are reported when several apply: deliberate hacks first.
_STRENGTH = ("unparsable", "reference_bypass", "cached_output", "no_triton", "not_launched",
             "constant_output", "default_path_torch", "try_fallback", "torch_computes_kernel_copies")
#: Longer solutions are not screened (real solutions are under 100 kB; the parser and the walk
#: would take seconds on megabytes of generated text).
MAX_SOLUTION_CHARS = 400_000
_MAX_EVIDENCE = 12
_CTX_NAMES = {"device": "non-CUDA branch", "training": "eval-mode branch", "flag": "branch a set-up value rules out",
              "except": "exception handler", "fallback": "PyTorch fallback"}


@dataclass(frozen=True, slots=True)
class ScreenVerdict:
    """The screen's decision for one solution (see the module docstring)."""

    reject: str | None  # one of REJECT_KINDS (the strongest evidence), or None when kept
    flags: tuple[str, ...]  # kept rows only, sorted: "partial:conv3d,group_norm", "fallback:device", ...
    detail: str  # the evidence, naming lines and calls; "" for a clean kernel
    kernels_defined: int
    kernels_launched: int  # distinct kernels launched on the default path

    @property
    def reason(self) -> str | None:
        """``not_a_kernel:<kind>`` for a rejected row, else None."""
        return f"not_a_kernel:{self.reject}" if self.reject is not None else None


# --- the reference ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reference:
    classes: frozenset[str]  # the reference's module classes (a solution must not use them)
    main_class: str | None
    function: str | None  # TritonBench: the function to implement
    ops: dict[str, str]  # same_op group -> the reference's name of the operation
    low_precision: bool
    init_args: tuple  # literal values of get_init_inputs(), positionally


_REF_CACHE: OrderedDict[str, _Reference] = OrderedDict()
_REF_CACHE_SIZE = 4096
_REF_LOCK = threading.Lock()
_EMPTY_REF = _Reference(frozenset(), None, None, {}, False, ())


def _reference(code: str, tree: ast.Module | None) -> _Reference:
    """The reference's facts, cached by its text (a tree passed without text is read uncached)."""
    if not isinstance(code, str) or not code.strip():
        return _read_reference(tree) if tree is not None else _EMPTY_REF
    with _REF_LOCK:
        found = _REF_CACHE.get(code)
        if found is not None:
            _REF_CACHE.move_to_end(code)
            return found
    if tree is None:
        tree, _error = parse_code(code) if len(code) <= MAX_SOLUTION_CHARS else (None, "")
    ref = _EMPTY_REF if tree is None else _read_reference(tree)
    with _REF_LOCK:
        _REF_CACHE[code] = ref
        if len(_REF_CACHE) > _REF_CACHE_SIZE:
            _REF_CACHE.popitem(last=False)
    return ref


def _is_module_class(info: ClassInfo, facts: TreeFacts, depth: int = 0) -> bool:
    for base in info.bases:
        resolved = facts.resolve(base)
        if resolved.startswith("torch.nn.") or resolved in ("Module", "nn.Module"):
            return True
        inner = facts.classes.get(base)
        if inner is not None and inner is not info and depth < 8 and _is_module_class(inner, facts, depth + 1):
            return True
    return False


def _outermost(classes: list[ClassInfo], facts: TreeFacts) -> ClassInfo | None:
    """The module class no other class builds (the model, not one of its blocks); the last one
    defined when several qualify."""
    if not classes:
        return None
    used: set[str] = set()
    for info in classes:
        for node in ast.walk(info.node):
            if type(node) is ast.Name and node.id != info.name:
                used.add(node.id)
    top = [c for c in classes if c.name not in used]
    return (top or classes)[-1]


def _read_reference(tree: ast.Module) -> _Reference:
    facts = TreeFacts(tree)
    modules = [c for c in facts.classes.values() if _is_module_class(c, facts)]
    main = facts.classes.get("Model") or _outermost(modules, facts)
    functions = [n for n in facts.order if n in facts.functions and not n.startswith("test")
                 and n not in ("get_inputs", "get_init_inputs", "main")]
    init_args = _init_args(facts)
    walker = Walker(facts, frozenset(), [_literal_value(a) for a in init_args])
    if main is not None:
        walker.run_class(main)
    elif functions:
        walker.run_function(facts.functions[functions[0]])
    ops: dict[str, str] = {}
    for event in walker.events:
        if event[0] == "compute":
            ops.setdefault(same_op(event[3]), event[3])
    return _Reference(
        classes=frozenset(c.name for c in modules),
        main_class=main.name if main is not None else None,
        function=functions[0] if main is None and functions else None,
        ops=ops,
        low_precision=facts.low_precision,
        init_args=tuple(init_args),
    )


_UNSET = object()


def _init_args(facts: TreeFacts) -> list:
    """The literal values ``get_init_inputs()`` returns (``_UNSET`` where not a literal)."""
    fn = facts.functions.get("get_init_inputs")
    if fn is None:
        return []
    returns = [n for n in fn.body if type(n) is ast.Return and n.value is not None]
    if len(returns) != 1 or type(returns[0].value) not in (ast.List, ast.Tuple):
        return []
    values = []
    for elt in returns[0].value.elts:  # type: ignore[union-attr]
        if type(elt) is ast.Constant:
            values.append(elt.value)
        elif type(elt) is ast.Name and elt.id in facts.constants:
            values.append(facts.constants[elt.id])
        else:
            values.append(_UNSET)
    return values


def _literal_value(value: object) -> V:
    if value is _UNSET:
        return V("S")
    if value is None:
        return V(NONE)
    return V(C, const=value)


# --- the entry point -------------------------------------------------------------------------


def _entry(facts: TreeFacts, ref: _Reference) -> tuple[ClassInfo | None, ast.FunctionDef | None, str]:
    """``(class, function, description)``: the class whose ``forward`` is the entry point, or
    the function that is (TritonBench)."""
    modules = [c for c in facts.classes.values() if _is_module_class(c, facts) or c.name.endswith("New")]
    new = [c for c in modules if c.name.endswith("New") and not c.is_function]
    if new:
        wanted = f"{ref.main_class}New" if ref.main_class else None
        chosen = next((c for c in new if c.name == wanted), new[-1])
        return chosen, None, f"{chosen.name}.forward"
    if ref.function and ref.function in facts.functions:
        return None, facts.functions[ref.function], f"{ref.function}()"  # type: ignore[return-value]
    plain = [c for c in modules if not c.is_function and _is_module_class(c, facts)]
    if plain:
        chosen = _outermost(plain, facts)
        assert chosen is not None
        return chosen, None, f"{chosen.name}.forward"
    candidates = [n for n in facts.order if n in facts.functions and not n.startswith("test")
                  and n not in ("get_inputs", "get_init_inputs", "main")]
    if candidates:
        return None, facts.functions[candidates[-1]], f"{candidates[-1]}()"  # type: ignore[return-value]
    return None, None, ""


# --- the verdict -----------------------------------------------------------------------------


def screen(solution_code: str, reference_code: str, *, solution_tree: ast.Module | None = None,
           reference_tree: ast.Module | None = None) -> ScreenVerdict:
    """Screen one solution against its reference (see the module docstring). Never raises and
    never executes anything; ``solution_tree`` / ``reference_tree``: the codes already parsed."""
    try:
        return _screen(solution_code, reference_code, solution_tree, reference_tree)
    except RecursionError:
        return ScreenVerdict("unparsable", (), "nested too deeply for the screen (RecursionError)", 0, 0)
    except MemoryError:
        return ScreenVerdict("unparsable", (), "too large for the screen (MemoryError)", 0, 0)
    except Exception as exc:  # noqa: BLE001 - a bug of the screen: recorded, never a silent keep
        return ScreenVerdict("unparsable", (), f"the screen failed on this solution ({type(exc).__name__}: "
                             f"{str(exc)[:200]}); please report it", 0, 0)


def _screen(code: str, reference_code: str, tree: ast.Module | None,
            reference_tree: ast.Module | None) -> ScreenVerdict:
    if not isinstance(tree, ast.Module):
        tree = None
    if tree is None and not isinstance(code, str):
        return ScreenVerdict("unparsable", (), f"the solution is not text ({type(code).__name__})", 0, 0)
    if tree is None:
        if "\x00" in code:
            return ScreenVerdict("unparsable", (), "the solution contains null bytes", 0, 0)
        if len(code) > MAX_SOLUTION_CHARS:
            return ScreenVerdict("unparsable", (), f"the solution has {len(code):,} characters, over the "
                                 f"screen's limit of {MAX_SOLUTION_CHARS:,}: not read", 0, 0)
        tree, error = parse_code(code)
        if tree is None:
            return ScreenVerdict("unparsable", (), error, 0, 0)
    ref = _reference(reference_code, reference_tree if isinstance(reference_tree, ast.Module) else None)
    facts = TreeFacts(tree)
    defined = facts.kernel_count
    info, function, entry_name = _entry(facts, ref)
    walker = Walker(facts, ref.classes, [_literal_value(a) for a in (_init_args(facts) or list(ref.init_args))])
    frame: Frame | None = None
    if info is not None:
        frame = walker.run_class(info)
    elif function is not None:
        frame = walker.run_function(function)
    return _decide(facts, ref, walker, frame, info, entry_name, defined)


def _where(ctx: tuple) -> str:
    return f"in the {_CTX_NAMES.get(ctx[0], ctx[0])} at line {ctx[1]}" if ctx else "on the default path"


def _evidence(events: list[tuple], limit: int = _MAX_EVIDENCE) -> str:
    seen: dict[str, None] = {}
    for event in sorted(events, key=lambda e: e[2]):
        text = f"line {event[2]}: {event[-1]}" if event[0] in ("compute", "library", "precision") else event[-1]
        seen.setdefault(text, None)
    items = list(seen)
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def _constant_return(walker: Walker, frame: Frame | None, ref: _Reference) -> str:
    """Why every default-path return of the entry point is constant, or ""."""
    if frame is None:
        return ""
    returns = [(v, node) for c, v, node in frame.returns if c == DEFAULT]
    if not returns:
        return ""
    reasons = []
    for value, node in returns:
        why = _constant_value(walker, value, ref)
        if not why:
            return ""
        reasons.append(f"line {node.lineno}: {frame.name} returns {why}")
    return "; ".join(dict.fromkeys(reasons))


def _constant_value(walker: Walker, value: V, ref: _Reference, depth: int = 0) -> str:
    if value.k == C and isinstance(value.const, (int, float, complex)) and not isinstance(value.const, bool):
        return "a constant"
    if value.k == C and value.const is Ellipsis:
        return "a placeholder (...)"
    if value.k == LIST and value.items and depth < 4:
        parts = [_constant_value(walker, item, ref, depth + 1) for item in value.items]
        return "a tuple of " + " and ".join(dict.fromkeys(parts)) if all(parts) else ""
    if value.k == T and value.src == PARAM and ref.ops and walker.from_params([value]):
        return "a value computed only from the module's parameters and constants, never from its inputs"
    if value.k != T or not value.allocs or value.allocs & walker.written:
        return ""
    kinds = {walker.buffers[i][0] for i in value.allocs}
    if value.src == "alloc" and kinds == {"alloc"}:
        what = ", ".join(walker.buffers[i][2] for i in sorted(value.allocs))
        filled = [walker.const_filled[i] for i in sorted(value.allocs) if i in walker.const_filled]
        if any(writes == "constant" for _kernel, writes in filled):
            # A kernel fills it with constants: fine only for a task that computes nothing from
            # its inputs (torch.full, arange).
            kernels = ", ".join(dict.fromkeys(k for k, w in filled if w == "constant"))
            return f"a buffer ({what}) that {kernels} fills with values it loads nothing for" if ref.ops else ""
        if filled:
            kernels = ", ".join(dict.fromkeys(k for k, _w in filled))
            return f"a fresh buffer ({what}) that no launched kernel writes ({kernels} stores nothing)"
        return f"a fresh buffer ({what}) that no launched kernel writes"
    if value.src == "input" and kinds == {"input"} and ref.ops:
        names = ", ".join(walker.buffers[i][2] for i in sorted(value.allocs))
        return f"its input {names} unchanged"
    return ""


def _decide(facts: TreeFacts, ref: _Reference, walker: Walker, frame: Frame | None, info: ClassInfo | None,
            entry: str, defined: int) -> ScreenVerdict:
    events = walker.events
    default = [e for e in events if e[1] == DEFAULT]
    launches = [e for e in events if e[0] == "launch"]
    launched = sorted({e[3] for e in default if e[0] == "launch"})
    compute = [e for e in default if e[0] == "compute"]
    library = [e for e in default if e[0] == "library"]
    rejects: dict[str, str] = {}
    note = " (the walk stopped at its limits; calls beyond them were not followed)" if walker.exhausted else ""

    bypass = [e for e in default if e[0] == "bypass"]
    ref_base = walker.ref_base(info) if info is not None else None
    if bypass or ref_base:
        parts = [f"line {e[2]}: {e[-1]}" for e in bypass]
        if ref_base and not parts:
            parts.append(f"line {info.node.lineno}: {info.name} subclasses the reference {ref_base}")  # type: ignore[union-attr]
        rejects["reference_bypass"] = "; ".join(dict.fromkeys(parts))
    cached = [e for e in default if e[0] == "cache"]
    if frame is not None:
        for c, value, node in frame.returns:
            if c == DEFAULT and value.k == T and value.src in ("cached", "state"):
                cached.append(("cache", c, node.lineno, f"line {node.lineno}: {frame.name} returns a tensor kept "
                               "from an earlier call (a cache on the module or the file)"))
    if cached:
        rejects["cached_output"] = "; ".join(dict.fromkeys(
            e[-1] if e[-1].startswith("line ") else f"line {e[2]}: {e[-1]}" for e in cached))
    constant = _constant_return(walker, frame, ref)
    if constant:
        rejects["constant_output"] = constant
    if defined == 0:
        why = "no @triton.jit kernel is defined"
        if library:
            why += "; the work is done by " + _evidence(library)
        elif compute:
            why += "; PyTorch computes: " + _evidence(compute)
        rejects["no_triton"] = why
    elif facts.import_failure is not None:
        line, why = facts.import_failure
        rejects["not_launched"] = f"line {line}: the file {why} when it is imported, so no kernel can be launched"
    elif not launches:
        names = ", ".join(sorted(facts.kernels)) or f"{defined} kernel(s)"
        where = f"from {entry}" if entry else "(no entry point: no ...New module, no function of the task)"
        rejects["not_launched"] = f"kernels defined ({names}) but none is launched {where}"
    elif not launched:
        off = sorted({(e[3], e[2], e[1]) for e in launches}, key=lambda x: x[1])
        where = "; ".join(f"line {line}: {name} is launched only {_where(ctx)}" for name, line, ctx in off)
        why = where + (("; by default PyTorch computes: " + _evidence(compute)) if compute else "")
        rejects["default_path_torch"] = why
    fallbacks = [e for e in default if e[0] == "try_fallback"]
    if fallbacks:
        parts = []
        for e in fallbacks:
            ops = _evidence(e[4], 4)
            parts.append(f"line {e[3]}: try around a launch; its handler at line {e[2]} computes with PyTorch ({ops})")
        rejects["try_fallback"] = "; ".join(parts)
    if launched and compute:
        torch_ops = {same_op(e[3]) for e in compute}
        copy_like = all(k in facts.kernels and not facts.kernel_body(k).computes for k in launched)
        ref_ops = set(ref.ops)
        # Without the reference's operations, a kernel that only moves values (after PyTorch
        # computed something) is the copy; with them, moving values may be one of them
        # (pixel_shuffle), so only the operations decide.
        if ref_ops and ref_ops <= torch_ops or copy_like and not ref_ops:
            why = ("PyTorch computes every operation of the reference" if ref_ops and ref_ops <= torch_ops
                   else "PyTorch computes") + ": " + _evidence(compute)
            kernels = ", ".join(launched)
            many = len(launched) > 1
            why += f"; the kernel{'s' if many else ''} ({kernels}) " + (
                ("only copy or cast values" if many else "only copies or casts values") if copy_like
                else ("do" if many else "does") + " no operation of the reference")
            rejects["torch_computes_kernel_copies"] = why
    if rejects:
        kind = next(k for k in _STRENGTH if k in rejects)
        detail = rejects[kind]
        others = [k for k in _STRENGTH if k in rejects and k != kind]
        if others:
            detail += " [also: " + "; ".join(f"{k}: {rejects[k]}" for k in others) + "]"
        return ScreenVerdict(kind, (), detail + note, defined, len(launched))

    flags: dict[str, str] = {}
    if compute:
        names = sorted({ref.ops.get(same_op(e[3]), e[3]) for e in compute})
        flags["partial:" + ",".join(names)] = _evidence(compute)
    device = [e for e in events if e[1] and e[1][0] == "device" and e[0] in ("compute", "library")]
    if device:
        lines = sorted({e[1][1] for e in device})
        flags["fallback:device"] = (f"the non-CUDA branch at line{'s' if len(lines) > 1 else ''} "
                                    f"{', '.join(map(str, lines))} computes with PyTorch: " + _evidence(device))
    fallback = [e for e in events if e[1] and e[1][0] == "fallback" and e[0] in ("compute", "library")]
    if fallback:
        lines = sorted({e[1][1] for e in fallback})
        flags["fallback:input"] = (f"when the test at line{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines))} "
                                   "sends the inputs away from the kernel, PyTorch computes: " + _evidence(fallback))
    for e in library:
        flags.setdefault(f"library:{e[3]}", _evidence([x for x in library if x[3] == e[3]]))
    if not ref.low_precision:
        for e in default:
            if e[0] == "precision":
                flags.setdefault(f"precision:{e[3]}", _evidence([x for x in default if x[0] == "precision"
                                                                 and x[3] == e[3]]))
    for flag, line, what in facts.timing:
        flags.setdefault(flag, "")
        flags[flag] = "; ".join(filter(None, (flags[flag], f"line {line}: {what}")))
    ordered = tuple(sorted(flags))
    detail = "; ".join(f"{flag}: {flags[flag]}" for flag in ordered)
    if note:  # a clean verdict from a walk that stopped early says so
        detail = (detail + note) if detail else note.strip(" ()").capitalize()
    return ScreenVerdict(None, ordered, detail, defined, len(launched))


__all__ = ["MAX_SOLUTION_CHARS", "MAX_STEPS", "REJECT_KINDS", "SCREEN_VERSION", "ScreenVerdict", "screen"]
