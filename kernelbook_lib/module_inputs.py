"""The test inputs of a KernelBook module file, as the template prompt generator states them:
each element of the list ``get_inputs()`` returns (:class:`InputFact`: a tensor's shape, dtype and
how its values are drawn, or a plain literal) and the construction arguments ``get_init_inputs()``
returns, when they are written as literals.

Literals are read with :func:`ast.literal_eval` (literals only); nothing is executed or
evaluated. What is not written as a literal is reported as unknown, never guessed.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

from kernelbook_lib.module_parse import ImportTable, _dotted, _function, _returned


@dataclass(frozen=True)
class InputFact:
    """One element of ``get_inputs()``: a tensor (shape/dtype/values) or a plain literal."""

    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    values: str | None = None  # how the values are drawn
    literal: str | None = None  # a non-tensor literal argument
    unknown: bool = False


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
