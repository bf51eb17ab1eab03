"""The offline prompt generator (``template-ast-v2``): a task specification built from the
syntax tree of a PyTorch module, deterministically, without a model.

The module's source is only *parsed* (``ast``), never executed or imported: the facts come from
:func:`kernelbook_lib.module_describe.describe_module` (on the reading of
:mod:`kernelbook_lib.module_parse` that the static judge shares): the class, its ``__init__``
parameters and ``forward`` signature, the input shapes of ``get_inputs()`` and the construction
arguments of ``get_init_inputs()`` when they are written as literals (read with
``ast.literal_eval``, which evaluates literals only), the operations ``forward`` uses, and the
learnable parameters ``__init__`` creates. Whatever cannot be read from the source is said to be
unknown, never guessed. This module writes the text.

The same source always gives the same text (no sets are iterated, nothing depends on time,
hashes or the environment), so ``template-ast-v2`` identifies the exact output; change
:data:`TEMPLATE_GENERATOR` whenever the text this module writes changes.
"""

from __future__ import annotations

import ast
from typing import Any

from kernelbook_lib.module_describe import (
    REASON_CLASS_NOT_FOUND,
    REASON_UNPARSEABLE,
    Holding,
    ModuleFacts,
    ModuleNotUsable,
    Param,
    check_module,
    describe_module,
    find_class,
    parse_module,
)
from kernelbook_lib.module_inputs import InputFact

__all__ = [
    "REASON_CLASS_NOT_FOUND", "REASON_UNPARSEABLE", "TEMPLATE_GENERATOR", "Holding", "InputFact", "ModuleFacts",
    "ModuleNotUsable", "Param", "analyze", "check_module", "find_class", "parse_module", "render",
    "template_specification",
]

#: The label of this generator (the ``generator`` column of its rows and of the summary).
TEMPLATE_GENERATOR = "template-ast-v2"

#: The facts the text is written from (see :func:`kernelbook_lib.module_describe.describe_module`).
analyze = describe_module


# --- the text -----------------------------------------------------------------------------------


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]" if shape else "[] (a scalar tensor)"


def _input_line(param: str | None, index: int, fact: InputFact) -> str:
    label = f"`{param}`" if param else f"input {index}"
    if fact.unknown:
        return f"- {label}: not written as a literal in the reference's `get_inputs()`; its shape and dtype are not stated here"
    if fact.literal is not None:
        return f"- {label}: the Python value `{fact.literal}`"
    dtype = fact.dtype or "a dtype the reference does not state literally"
    return f"- {label}: {dtype} tensor of shape {_shape_text(fact.shape or ())}, values {fact.values}"


def _value_text(value: Any) -> str:
    return repr(value)


def render(facts: ModuleFacts, module_name: str) -> str:
    """The specification text (Markdown) for ``facts``."""
    new = f"{module_name}New"
    lines: list[str] = [f"# Task: implement `{new}` with Triton kernels", ""]
    lines.append(
        f"Write `{new}`, a `torch.nn.Module` that computes exactly what the reference PyTorch module "
        f"`{module_name}` computes, doing the work of `forward` in Triton kernels."
    )
    lines += ["", "## What the module computes", ""]
    if facts.summary:
        lines.append(f"The reference documents itself as: \"{facts.summary}\"")
        lines.append("")
    if facts.operations or facts.layers_used or facts.operators or facts.tensor_methods:
        lines.append("Its forward pass is built from these operations (each group in the order it first "
                     "appears in the source):")
        for name, gloss in facts.operations:
            lines.append(f"- `{name}`" + (f" ({gloss})" if gloss else ""))
        for attr, kind in facts.layers_used:
            lines.append(f"- the layer `{attr}`: {kind}")
        if facts.tensor_methods:
            lines.append("- tensor methods: " + ", ".join(f"`{m}`" for m in facts.tensor_methods))
        if facts.operators:
            lines.append("- operators: " + ", ".join(f"`{o}`" for o in facts.operators))
    else:
        lines.append("Its forward pass calls no operation: it returns (a view of) its input.")
    if facts.helper_classes:
        lines += ["", "The reference file also defines these helper classes, which the module may use: "
                  + ", ".join(f"`{c}`" for c in facts.helper_classes) + "."]

    lines += ["", "## Interface", "", f"- Class: `{new}(torch.nn.Module)`"]
    if facts.init_params:
        lines.append("- `__init__` parameters (after `self`), in this order: "
                     + ", ".join(f"`{p.signature_text()}`" for p in facts.init_params))
    else:
        lines.append("- `__init__` takes no parameters besides `self`")
    lines.append("- forward signature: `forward(" + ", ".join(["self", *(p.signature_text() for p in facts.forward_params)]) + ")`")
    if facts.init_args is not None:
        args, kwargs = facts.init_args
        given = [_value_text(a) for a in args] + [f"{k}={_value_text(v)}" for k, v in kwargs.items()]
        lines.append("- the reference's test builds the module with "
                     + (", ".join(f"`{g}`" for g in given) if given else "no arguments"))

    lines += ["", "## Inputs", ""]
    params = [p.name for p in facts.forward_params if p.kind == "positional"]
    if facts.inputs is None:
        names = ", ".join(f"`{p.name}`" for p in facts.forward_params) or "no arguments"
        lines.append(f"`forward` takes {names}. The reference does not give example inputs as literals, "
                     "so their shapes and dtypes are not stated here; accept what the reference accepts.")
    else:
        lines.append("The reference's `get_inputs()` passes these values to `forward`, in this order:")
        for i, fact in enumerate(facts.inputs):
            lines.append(_input_line(params[i] if i < len(params) else None, i, fact))
        if len(facts.inputs) != len(params):
            lines.append(f"(`forward` has {len(params)} positional parameter(s) besides `self`; "
                         f"`get_inputs()` gives {len(facts.inputs)} value(s).)")
        lines.append("These are example sizes: the module must work for any sizes the reference accepts.")

    lines += ["", "## Output", ""]
    if facts.returns_tuple is not None:
        lines.append(f"`forward` returns a tuple of {facts.returns_tuple} values, like the reference: each with "
                     "the reference's shape and dtype and the same values up to floating-point tolerance.")
    else:
        lines.append("`forward` returns what the reference returns: the same shape and dtype, and the same "
                     "values up to floating-point tolerance.")

    learnable = [h for h in facts.holdings if h.learnable]
    unknown = [h for h in facts.holdings if h.learnable is None]
    if learnable or unknown:
        lines += ["", "## Learnable parameters", ""]
        if learnable:
            lines.append("The reference holds these learnable parameters; hold the same ones, under the same "
                         "attribute names and with the same shapes, so the reference's weights load into the new module:")
            lines += [f"- `self.{h.attribute}`: {h.what}" for h in learnable]
        if unknown:
            lines.append("These attributes may hold parameters that cannot be read from the source; "
                         "mirror them as the reference does:")
            lines += [f"- `self.{h.attribute}`: {h.what}" for h in unknown]

    lines += ["", "## Requirements", ""]
    lines.append("- Compute every value of `forward` in Triton kernels (`@triton.jit`); PyTorch may only allocate "
                 "outputs, hold parameters and change views or shapes (reshape, transpose).")
    lines.append("- Produce the reference's results for every input the reference accepts, including sizes that "
                 "are not powers of two and dimensions of size 1.")
    if facts.inplace:
        lines.append("- The reference uses in-place operations (" + ", ".join(f"`{m}`" for m in facts.inplace)
                     + "); match the values it returns.")
    else:
        lines.append("- The reference changes no tensor in place, so its inputs are left unchanged; "
                     "the new module must not modify its inputs either.")
    return "\n".join(lines) + "\n"


def template_specification(python_code: str, module_name: str, tree: ast.Module | None = None) -> str:
    """The ``template-ast-v2`` specification of ``module_name`` (``tree``: the parse of
    ``python_code``, when already made). Raises :class:`ModuleNotUsable`."""
    return render(describe_module(python_code, module_name, tree), module_name)
