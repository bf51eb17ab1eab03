"""Deterministic synthetic data in the exact schemas of the two source datasets.

The Hub is not reachable from our machines, so the bundled sample, the tests and the benchmarks
run on data made here. Everything is generated from a seed with :class:`random.Random` (never
global random state, never ``hash()``), so the same arguments always give the same rows and, with
the pinned writer options below, byte-identical parquet files.

What is generated:

* **Eval rollouts** in the schema of ``siro1/kernelbook-glm4-evals``
  (:data:`kernelbook_lib.schema.SOURCE_ARROW_SCHEMA`): KernelBook-style PyTorch modules built from
  templates that cover every level of the difficulty rubric (trivial copy to whole architectures),
  each answered by several rollouts whose Triton solutions vary in quality (clean, masked,
  documented code down to one-letter names, no masks and magic numbers, and a few syntax errors),
  with rewards on both sides of the 0.85 threshold (some exactly at it), ``module_name``
  collisions between different problems, two problems whose code is listed again under a second
  ``example_id``, and (optionally) a few bad rows of each kind the loader must reject.
* **KernelBook rows** in the schema of ``GPUMODE/KernelBook`` (:data:`KERNELBOOK_ARROW_SCHEMA`),
  with exact duplicates and empty ``python_code`` rows.

Module and solution code is only ever produced as text here: nothing is imported or executed.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kernelbook_lib.schema import SOURCE_ARROW_SCHEMA
from kernelbook_lib.stages import DEFAULT_THRESHOLD

#: The levels of the difficulty rubric the module templates cover (index = level number).
LEVELS: tuple[str, ...] = ("trivial", "elementwise", "reduction", "moderate", "complex", "advanced")

#: The reward threshold of the filter (strict ``>``); the sample has rows at exactly this value.
REWARD_THRESHOLD = DEFAULT_THRESHOLD

#: The kinds of bad rows :func:`eval_rows` can plant. Nothing in a row marks it: tests and the
#: loader find them by content.
BAD_ROW_KINDS: tuple[str, ...] = (
    "reward_null",  # reward is null
    "reward_nan",  # reward is NaN
    "empty_completion",  # completion is an empty list
    "empty_content",  # the assistant message has empty content (reasoning only)
    "missing_answer",  # the assistant content has a code block but no <answer>...</answer>
    "empty_python_code",  # info.python_code is ""
    "empty_module_name",  # info.module_name is ""
)

#: The schema of ``GPUMODE/KernelBook`` rows as far as the pipeline uses them (provenance included).
KERNELBOOK_ARROW_SCHEMA = pa.schema(
    [
        ("module_name", pa.string()),
        ("python_code", pa.string()),
        ("triton_code", pa.string()),
        ("uuid", pa.int64()),
        ("repo_name", pa.string()),
        ("repo_link", pa.string()),
        ("licenses", pa.list_(pa.string())),
        ("stars", pa.int64()),
        ("sha", pa.string()),
        ("entry_point", pa.string()),
    ]
)

# Parquet writer options, pinned so that the same rows always give the same bytes (pyarrow writes
# no timestamps; ``created_by`` names the pyarrow version, which uv.lock pins).
_PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 6,
    "use_dictionary": True,
    "write_statistics": True,
    "version": "2.6",
    "data_page_version": "1.0",
    "data_page_size": 1 << 20,
    "store_schema": True,
}
_LARGE_BATCH_ROWS = 10_000  # rows per row group in write_evals_large
_LARGE_COMPRESSION_LEVEL = 1  # zstd level for the (large, throw-away) benchmark file

# ============================================================================================
# Text rendering with style switches
# ============================================================================================


@dataclass(frozen=True)
class Style:
    """How a generated Triton solution is written (its quality, for the style judge)."""

    tier: str
    descriptive: bool  # descriptive names vs one-letter names and k0/k1 kernels
    masks: bool  # bounds masks on loads/stores
    comments: bool  # docstrings and comments
    constexpr: bool  # ``BLOCK_SIZE: tl.constexpr`` parameters vs hard-coded magic numbers
    helpers: bool  # one launcher function per kernel vs everything inline in ``forward``


STYLES: dict[str, Style] = {
    "good": Style("good", descriptive=True, masks=True, comments=True, constexpr=True, helpers=True),
    "ok": Style("ok", descriptive=True, masks=True, comments=False, constexpr=True, helpers=True),
    "rough": Style("rough", descriptive=True, masks=True, comments=True, constexpr=False, helpers=False),
    "poor": Style("poor", descriptive=False, masks=False, comments=False, constexpr=False, helpers=False),
}
_TIER_WEIGHTS = (("good", 0.36), ("ok", 0.24), ("rough", 0.14), ("poor", 0.26))
_SYNTAX_ERROR_RATE = 0.045


def _render(template: str, flags: dict[str, bool], tokens: dict[str, str], comments: bool) -> str:
    """Render a code template.

    A line may start (after its indentation) with ``@@flag `` or ``@@!flag ``: it is kept only
    when the flag is true (false). Full-line ``#`` comments are dropped when ``comments`` is
    false. ``{token}`` fields are then filled from ``tokens``.
    """
    out: list[str] = []
    for line in template.split("\n"):
        body = line.lstrip(" ")
        indent = line[: len(line) - len(body)]
        keep = True
        while body.startswith("@@"):
            tag, _, body = body[2:].partition(" ")
            negate = tag.startswith("!")
            if flags[tag.lstrip("!")] == negate:
                keep = False
        if not keep or (not comments and body.startswith("#")):
            continue
        out.append((indent + body).rstrip())
    return "\n".join(out).format_map(tokens)


def _pick_names(style: Style, pairs: dict[str, tuple[str, str]]) -> dict[str, str]:
    return {key: (long if style.descriptive else short) for key, (long, short) in pairs.items()}


def _block_tokens(style: Style, literal: int, name: str = "BLOCK_SIZE") -> dict[str, str]:
    """Tokens for one block-size parameter: a constexpr or a magic number."""
    if style.constexpr:
        return {
            "BS": name,
            "bs_param": f", {name}: tl.constexpr",
            "bs_kw": f", {name}={name}",
            "block": str(literal),
            "blockm1": str(literal - 1),
        }
    return {"BS": str(literal), "bs_param": "", "bs_kw": "", "block": str(literal), "blockm1": str(literal - 1)}


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# ============================================================================================
# Triton solution components: one @triton.jit kernel plus the code that launches it
# ============================================================================================


class _Component:
    """A kernel of a generated solution. Subclasses are frozen dataclasses (hashable, cached)."""

    key: str  # names the kernel (``{key}_kernel``) and its launcher (``triton_{key}``)
    params: tuple[str, ...]  # launcher parameters
    tensor_params: tuple[str, ...] = ()  # launcher parameters made contiguous by careful code
    summary: str = ""  # one line for docstrings, explanations and reasoning

    def kernel(self, style: Style, kname: str) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def launch(self, style: Style, kname: str, args: tuple[str, ...], out: str) -> str:  # pragma: no cover
        raise NotImplementedError


_POINTWISE_KERNEL = '''\
@triton.jit
def {kname}({x_ptr}{y_param}, {out_ptr}, {n}{bs_param}):
    @@doc """{summary}
    @@doc
    @@doc Each program handles one contiguous block of the flattened tensor.
    @@doc """
    {pid} = tl.program_id(axis=0)
    {start} = {pid} * {BS}
    {offs} = {start} + tl.arange(0, {BS})
    @@mask # The last block may run past the end of the tensor, so mask it.
    @@mask {mask} = {offs} < {n}
    {a} = tl.load({x_ptr} + {offs}{mk})
    @@bin {b} = tl.load({y_ptr} + {offs}{mk})
    {res} = {expr}
    tl.store({out_ptr} + {offs}, {res}{mk})'''

_POINTWISE_LAUNCH = """\
{out} = torch.empty_like({arg0})
{n} = {out}.numel()
@@cexpr BLOCK_SIZE = {block}
@@cexpr grid = (triton.cdiv({n}, BLOCK_SIZE),)
@@!cexpr grid = (({n} + {blockm1}) // {block},)
{kname}[grid]({arg0}{arg1}, {out}, {n}{bs_kw})"""


@dataclass(frozen=True)
class _Pointwise(_Component):
    op: str
    expr: str  # Triton expression over {a} (and {b} for binary ops)
    arity: int = 1
    summary: str = ""

    @property
    def key(self) -> str:  # type: ignore[override]
        return self.op

    @property
    def params(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("x", "y")[: self.arity]

    @property
    def tensor_params(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.params

    def kernel(self, style: Style, kname: str) -> str:
        names = _pick_names(
            style,
            {
                "x_ptr": ("x_ptr", "a"),
                "y_ptr": ("y_ptr", "b"),
                "out_ptr": ("out_ptr", "c"),
                "n": ("n_elements", "n"),
                "pid": ("pid", "p"),
                "start": ("block_start", "s"),
                "offs": ("offsets", "o"),
                "mask": ("mask", "m"),
                "a": ("x", "u"),
                "b": ("y", "v"),
                "res": ("result", "r"),
            },
        )
        tokens = {**names, **_block_tokens(style, 1024), "kname": kname, "summary": self.summary}
        tokens["y_param"] = f", {names['y_ptr']}" if self.arity == 2 else ""
        tokens["mk"] = f", mask={names['mask']}" if style.masks else ""
        tokens["expr"] = self.expr.format(a=names["a"], b=names["b"])
        flags = {"doc": style.comments, "mask": style.masks, "bin": self.arity == 2}
        return _render(_POINTWISE_KERNEL, flags, tokens, style.comments)

    def launch(self, style: Style, kname: str, args: tuple[str, ...], out: str) -> str:
        tokens = {
            **_block_tokens(style, 1024),
            "kname": kname,
            "out": out,
            "n": "n_elements" if style.descriptive else "n",
            "arg0": args[0],
            "arg1": f", {args[1]}" if self.arity == 2 else "",
        }
        return _render(_POINTWISE_LAUNCH, {"cexpr": style.constexpr}, tokens, style.comments)


_REDUCE_KERNEL = '''\
@triton.jit
def {kname}({x_ptr}, {out_ptr}, {n_cols}{bs_param}):
    @@doc """{summary}
    @@doc
    @@doc The input is a contiguous ``[n_rows, n_cols]`` matrix; program ``i`` reduces row ``i``.
    @@doc """
    # One program per row; a whole row fits in one block.
    {row} = tl.program_id(0)
    {cols} = tl.arange(0, {BS})
    @@mask {mask} = {cols} < {n_cols}
    {vals} = tl.load({x_ptr} + {row} * {n_cols} + {cols}{mko}).to(tl.float32)
    {res} = {reduce}
    tl.store({out_ptr} + {row}, {res})'''

_REDUCE_LAUNCH = """\
@@move {xr} = {arg0}.movedim({dim}, -1).contiguous()
@@!move {xr} = {arg0}.contiguous()
{n_cols} = {xr}.shape[-1]
{out} = torch.empty({xr}.shape[:-1], device={xr}.device, dtype={xr}.dtype)
@@cexpr BLOCK_SIZE = triton.next_power_of_2({n_cols})
{kname}[({out}.numel(),)]({xr}, {out}, {n_cols}{bs_kw})"""

_REDUCE_OPS = {
    # op: (expression over {vals} and {n_cols}, the masked-load fill value, summary)
    "sum": ("tl.sum({vals}, axis=0)", "0.0", "Sum of each row."),
    "mean": ("tl.sum({vals}, axis=0) / {n_cols}", "0.0", "Mean of each row."),
    "max": ("tl.max({vals}, axis=0)", "float('-inf')", "Maximum of each row."),
    "min": ("tl.min({vals}, axis=0)", "float('inf')", "Minimum of each row."),
    "l2norm": ("tl.sqrt(tl.sum({vals} * {vals}, axis=0))", "0.0", "Euclidean (L2) norm of each row."),
}


@dataclass(frozen=True)
class _RowReduce(_Component):
    op: str
    dim: int  # the reduced dimension as the module writes it
    move: bool  # the reduced dimension is not the last one
    cols: int  # its size in get_inputs() (poor solutions hard-code it)
    params: tuple[str, ...] = ("x",)

    @property
    def key(self) -> str:  # type: ignore[override]
        return f"row_{self.op}"

    @property
    def summary(self) -> str:  # type: ignore[override]
        return _REDUCE_OPS[self.op][2]

    def kernel(self, style: Style, kname: str) -> str:
        names = _pick_names(
            style,
            {
                "x_ptr": ("x_ptr", "a"),
                "out_ptr": ("out_ptr", "b"),
                "n_cols": ("n_cols", "n"),
                "row": ("row_idx", "r"),
                "cols": ("col_offsets", "c"),
                "mask": ("mask", "m"),
                "vals": ("row", "v"),
                "res": ("result", "s"),
            },
        )
        expr, fill, summary = _REDUCE_OPS[self.op]
        tokens = {**names, **_block_tokens(style, _next_pow2(self.cols)), "kname": kname, "summary": summary}
        tokens["mko"] = f", mask={names['mask']}, other={fill}" if style.masks else ""
        tokens["reduce"] = expr.format(vals=names["vals"], n_cols=names["n_cols"])
        return _render(_REDUCE_KERNEL, {"doc": style.comments, "mask": style.masks}, tokens, style.comments)

    def launch(self, style: Style, kname: str, args: tuple[str, ...], out: str) -> str:
        names = _pick_names(style, {"xr": ("x_rows", "t"), "n_cols": ("n_cols", "n")})
        tokens = {**names, **_block_tokens(style, 0), "kname": kname, "out": out, "arg0": args[0], "dim": str(self.dim)}
        return _render(_REDUCE_LAUNCH, {"cexpr": style.constexpr, "move": self.move}, tokens, style.comments)


_ROWNORM_KERNEL = '''\
@triton.jit
def {kname}({x_ptr}{w_param}{b_param}, {out_ptr}, {n_cols}{eps_param}{bs_param}):
    @@doc """{summary}
    @@doc
    @@doc Program ``i`` normalises row ``i`` of a contiguous ``[n_rows, n_cols]`` matrix;
    @@doc the row is loaded once and all statistics are computed in fp32.
    @@doc """
    {row} = tl.program_id(0)
    {cols} = tl.arange(0, {BS})
    @@mask {mask} = {cols} < {n_cols}
    {vals} = tl.load({x_ptr} + {row} * {n_cols} + {cols}{mko}).to(tl.float32)
{body}
    tl.store({out_ptr} + {row} * {n_cols} + {cols}, {res}{mk})'''

_ROWNORM_BODIES = {
    "softmax": """\
    # Subtract the row maximum so that exp() cannot overflow.
    {mx} = tl.max({vals}, axis=0)
    {num} = tl.exp({vals} - {mx})
    {den} = tl.sum({num}, axis=0)
    {res} = {num} / {den}""",
    "log_softmax": """\
    # log_softmax(x) = x - max - log(sum(exp(x - max))), stable for large inputs.
    {mx} = tl.max({vals}, axis=0)
    {num} = tl.exp({vals} - {mx})
    {den} = tl.sum({num}, axis=0)
    {res} = {vals} - {mx} - tl.log({den})""",
    "layernorm": """\
    {mean} = tl.sum({vals}, axis=0) / {n_cols}
    # Zero the padding lanes so they do not contribute to the variance.
    @@mask {diff} = tl.where({mask}, {vals} - {mean}, 0.0)
    @@!mask {diff} = {vals} - {mean}
    {var} = tl.sum({diff} * {diff}, axis=0) / {n_cols}
    {rstd} = 1.0 / tl.sqrt({var} + {eps})
    {w} = tl.load({w_ptr} + {cols}{mk})
    {bb} = tl.load({b_ptr} + {cols}{mk})
    {res} = {diff} * {rstd} * {w} + {bb}""",
    "rmsnorm": """\
    # Root mean square over the row; no mean subtraction.
    {ms} = tl.sum({vals} * {vals}, axis=0) / {n_cols}
    {rstd} = 1.0 / tl.sqrt({ms} + {eps})
    {w} = tl.load({w_ptr} + {cols}{mk})
    {res} = {vals} * {rstd} * {w}""",
    "l2normalize": """\
    {nrm} = tl.sqrt(tl.sum({vals} * {vals}, axis=0))
    # Clamp the norm like F.normalize does, to avoid dividing by zero.
    {res} = {vals} / tl.maximum({nrm}, {eps})""",
}
_ROWNORM_SUMMARY = {
    "softmax": "Row-wise softmax.",
    "log_softmax": "Row-wise log-softmax.",
    "layernorm": "Layer normalisation of each row with an affine weight and bias.",
    "rmsnorm": "RMS normalisation of each row with a learned scale.",
    "l2normalize": "Divide each row by its L2 norm.",
}
_ROWNORM_LAUNCH = """\
@@move {xr} = {arg0}.movedim({dim}, -1).contiguous()
@@!move {xr} = {arg0}.contiguous()
{n_cols} = {xr}.shape[-1]
{yr} = torch.empty_like({xr})
@@cexpr BLOCK_SIZE = triton.next_power_of_2({n_cols})
{kname}[({xr}.numel() // {n_cols},)]({xr}{w_arg}{b_arg}, {yr}, {n_cols}{eps_arg}{bs_kw})
@@move {out} = {yr}.movedim(-1, {dim})"""


@dataclass(frozen=True)
class _RowNorm(_Component):
    op: str
    dim: int = -1
    move: bool = False
    cols: int = 4
    eps: float = 1e-5

    @property
    def key(self) -> str:  # type: ignore[override]
        return self.op

    @property
    def summary(self) -> str:  # type: ignore[override]
        return _ROWNORM_SUMMARY[self.op]

    @property
    def params(self) -> tuple[str, ...]:  # type: ignore[override]
        return {"layernorm": ("x", "weight", "bias"), "rmsnorm": ("x", "weight")}.get(self.op, ("x",))

    @property
    def _fill(self) -> str:
        return "float('-inf')" if self.op in ("softmax", "log_softmax") else "0.0"

    @property
    def _has_eps(self) -> bool:
        return self.op in ("layernorm", "rmsnorm", "l2normalize")

    def kernel(self, style: Style, kname: str) -> str:
        names = _pick_names(
            style,
            {
                "x_ptr": ("x_ptr", "a"),
                "w_ptr": ("weight_ptr", "w"),
                "b_ptr": ("bias_ptr", "b"),
                "out_ptr": ("out_ptr", "o"),
                "n_cols": ("n_cols", "n"),
                "row": ("row_idx", "r"),
                "cols": ("col_offsets", "c"),
                "mask": ("mask", "m"),
                "vals": ("x", "v"),
                "res": ("y", "y"),
                "mx": ("row_max", "mx"),
                "num": ("numerator", "e"),
                "den": ("denominator", "s"),
                "mean": ("mean", "mu"),
                "diff": ("centered", "d"),
                "var": ("var", "va"),
                "rstd": ("rstd", "rs"),
                "ms": ("mean_square", "ms"),
                "w": ("weight", "g"),
                "bb": ("bias", "h"),
                "nrm": ("norm", "l"),
            },
        )
        tokens = {**names, **_block_tokens(style, _next_pow2(self.cols)), "kname": kname, "summary": self.summary}
        tokens["mk"] = f", mask={names['mask']}" if style.masks else ""
        tokens["mko"] = f", mask={names['mask']}, other={self._fill}" if style.masks else ""
        tokens["w_param"] = f", {names['w_ptr']}" if self.op in ("layernorm", "rmsnorm") else ""
        tokens["b_param"] = f", {names['b_ptr']}" if self.op == "layernorm" else ""
        with_eps_param = self._has_eps and style.constexpr
        tokens["eps_param"] = ", eps" if with_eps_param else ""
        tokens["eps"] = "eps" if with_eps_param else repr(self.eps)
        flags = {"doc": style.comments, "mask": style.masks}
        tokens["body"] = _render(_ROWNORM_BODIES[self.op], flags, tokens, style.comments)
        return _render(_ROWNORM_KERNEL, flags, tokens, style.comments)

    def launch(self, style: Style, kname: str, args: tuple[str, ...], out: str) -> str:
        names = _pick_names(style, {"xr": ("x_rows", "t"), "n_cols": ("n_cols", "n"), "yr": ("y_rows", "z")})
        tokens = {**names, **_block_tokens(style, 0), "kname": kname, "out": out, "arg0": args[0], "dim": str(self.dim)}
        if not self.move:
            tokens["yr"] = out
        tokens["w_arg"] = f", {args[1]}" if len(args) > 1 else ""
        tokens["b_arg"] = f", {args[2]}" if len(args) > 2 else ""
        tokens["eps_arg"] = f", {self.eps!r}" if self._has_eps and style.constexpr else ""
        return _render(_ROWNORM_LAUNCH, {"cexpr": style.constexpr, "move": self.move}, tokens, style.comments)


_MATMUL_KERNEL = '''\
@triton.jit
def {kname}(
    {a_ptr}, {w_ptr}{bias_param}, {c_ptr},
    {M}, {N}, {K},
    {sam}, {sak}, {swn}, {swk}, {scm}, {scn},{block_params}
):
    @@doc """{summary}
    @@doc
    @@doc ``A`` is ``[M, K]``, ``W`` is ``[N, K]`` (the ``nn.Linear`` layout, read transposed
    @@doc through its strides) and ``C`` is ``[M, N]``. Program ``(i, j)`` computes one
    @@doc ``BLOCK_M x BLOCK_N`` tile of ``C``, accumulating in fp32.
    @@doc """
    {pid_m} = tl.program_id(0)
    {pid_n} = tl.program_id(1)
    {rm} = {pid_m} * {BM} + tl.arange(0, {BM})
    {rn} = {pid_n} * {BN} + tl.arange(0, {BN})
    {rk} = tl.arange(0, {BK})
    {acc} = tl.zeros(({BM}, {BN}), dtype=tl.float32)
    # March along K one tile at a time.
    for {k0} in range(0, {K}, {BK}):
        {kk} = {k0} + {rk}
        {a} = tl.load({a_ptr} + {rm}[:, None] * {sam} + {kk}[None, :] * {sak}{amask})
        {w} = tl.load({w_ptr} + {rn}[None, :] * {swn} + {kk}[:, None] * {swk}{wmask})
        {acc} += tl.dot({a}, {w})
    @@bias # Fused epilogue: bias and activation are applied while the tile is in registers.
    @@bias {acc} += tl.load({bias_ptr} + {rn}{bmask})[None, :]
    @@act {acc} = {act}
    tl.store({c_ptr} + {rm}[:, None] * {scm} + {rn}[None, :] * {scn}, {acc}{cmask})'''

_MATMUL_LAUNCH = """\
{a2} = {arg0}.reshape(-1, {arg0}.shape[-1])
{M}, {K} = {a2}.shape
{N} = {arg1}.shape[0]
{c} = torch.empty(({M}, {N}), device={a2}.device, dtype=torch.float32)
@@cexpr grid = (triton.cdiv({M}, 32), triton.cdiv({N}, 32))
@@!cexpr grid = (({M} + 15) // 16, ({N} + 15) // 16)
{kname}[grid](
    {a2}, {arg1}{bias_arg}, {c},
    {M}, {N}, {K},
    {a2}.stride(0), {a2}.stride(1), {arg1}.stride(0), {arg1}.stride(1), {c}.stride(0), {c}.stride(1),{block_kw}
)
{out} = {c}.reshape(*{arg0}.shape[:-1], {N})"""

_ACTIVATIONS = {
    "relu": "tl.maximum({acc}, 0.0)",
    "gelu": "0.5 * {acc} * (1.0 + tl.erf({acc} * 0.7071067811865476))",
}


@dataclass(frozen=True)
class _Matmul(_Component):
    """``act(x @ weight.T + bias)``: nn.Linear with a fused epilogue."""

    bias: bool = True
    act: str | None = None

    @property
    def key(self) -> str:  # type: ignore[override]
        return "linear" + (f"_{self.act}" if self.act else "") + ("" if self.bias else "_nobias")

    @property
    def params(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("x", "weight", "bias") if self.bias else ("x", "weight")

    @property
    def summary(self) -> str:  # type: ignore[override]
        act = f"{self.act}(" if self.act else ""
        return f"Compute C = {act}A @ W^T{' + bias' if self.bias else ''}{')' if self.act else ''} with a tiled matmul."

    def kernel(self, style: Style, kname: str) -> str:
        names = _pick_names(
            style,
            {
                "a_ptr": ("a_ptr", "a"),
                "w_ptr": ("w_ptr", "b"),
                "bias_ptr": ("bias_ptr", "d"),
                "c_ptr": ("c_ptr", "c"),
                "sam": ("stride_am", "s0"),
                "sak": ("stride_ak", "s1"),
                "swn": ("stride_wn", "s2"),
                "swk": ("stride_wk", "s3"),
                "scm": ("stride_cm", "s4"),
                "scn": ("stride_cn", "s5"),
                "pid_m": ("pid_m", "i"),
                "pid_n": ("pid_n", "j"),
                "rm": ("offs_m", "rm"),
                "rn": ("offs_n", "rn"),
                "rk": ("offs_k", "rk"),
                "acc": ("acc", "acc"),
                "k0": ("k_start", "k"),
                "kk": ("k_offs", "kk"),
                "a": ("a", "x"),
                "w": ("w", "y"),
            },
        )
        tokens = {**names, "M": "M", "N": "N", "K": "K", "kname": kname, "summary": self.summary}
        if style.constexpr:
            tokens.update(BM="BLOCK_M", BN="BLOCK_N", BK="BLOCK_K")
            tokens["block_params"] = "\n    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,"
        else:
            tokens.update(BM="16", BN="16", BK="16", block_params="")
        rm, rn, kk = names["rm"], names["rn"], names["kk"]
        if style.masks:
            tokens["amask"] = f", mask=({rm}[:, None] < M) & ({kk}[None, :] < K), other=0.0"
            tokens["wmask"] = f", mask=({rn}[None, :] < N) & ({kk}[:, None] < K), other=0.0"
            tokens["bmask"] = f", mask={rn} < N, other=0.0"
            tokens["cmask"] = f", mask=({rm}[:, None] < M) & ({rn}[None, :] < N)"
        else:
            tokens.update(amask="", wmask="", bmask="", cmask="")
        tokens["bias_param"] = f", {names['bias_ptr']}" if self.bias else ""
        tokens["act"] = _ACTIVATIONS[self.act].format(acc=names["acc"]) if self.act else ""
        flags = {"doc": style.comments, "bias": self.bias, "act": self.act is not None}
        return _render(_MATMUL_KERNEL, flags, tokens, style.comments)

    def launch(self, style: Style, kname: str, args: tuple[str, ...], out: str) -> str:
        names = _pick_names(style, {"a2": ("x_2d", "t"), "c": ("out_2d", "r")})
        tokens = {**names, "M": "M", "N": "N", "K": "K", "kname": kname, "out": out, "arg0": args[0], "arg1": args[1]}
        tokens["bias_arg"] = f", {args[2]}" if self.bias else ""
        tokens["block_kw"] = "\n    BLOCK_M=32, BLOCK_N=32, BLOCK_K=32," if style.constexpr else ""
        return _render(_MATMUL_LAUNCH, {"cexpr": style.constexpr}, tokens, style.comments)


_AFFINE_KERNEL = '''\
@triton.jit
def {kname}({x_ptr}, {scale_ptr}, {shift_ptr}, {out_ptr}, {n}, {C}, {HW}{bs_param}):
    @@doc """{summary}
    @@doc
    @@doc Inference-mode batch norm folded into one multiply-add per element of an NCHW tensor.
    @@doc """
    {pid} = tl.program_id(0)
    {offs} = {pid} * {BS} + tl.arange(0, {BS})
    @@mask {mask} = {offs} < {n}
    # Recover the channel of each element from its flat NCHW index.
    {ch} = ({offs} // {HW}) % {C}
    {a} = tl.load({x_ptr} + {offs}{mk})
    {sc} = tl.load({scale_ptr} + {ch}{mk})
    {sh} = tl.load({shift_ptr} + {ch}{mk})
    {res} = {a} * {sc} + {sh}
    @@relu {res} = tl.maximum({res}, 0.0)
    tl.store({out_ptr} + {offs}, {res}{mk})'''

_AFFINE_LAUNCH = """\
# Fold the running statistics and the affine parameters into one scale and shift per channel.
{scale} = {arg1}.weight / torch.sqrt({arg1}.running_var + {arg1}.eps)
{shift} = {arg1}.bias - {arg1}.running_mean * {scale}
{xc} = {arg0}.contiguous()
{out} = torch.empty_like({xc})
{n} = {xc}.numel()
@@cexpr BLOCK_SIZE = {block}
@@cexpr grid = (triton.cdiv({n}, BLOCK_SIZE),)
@@!cexpr grid = (({n} + {blockm1}) // {block},)
{kname}[grid]({xc}, {scale}, {shift}, {out}, {n}, {xc}.shape[1], {xc}.shape[2] * {xc}.shape[3]{bs_kw})"""


@dataclass(frozen=True)
class _ChannelAffine(_Component):
    """Inference batch norm (per-channel scale and shift), optionally fused with ReLU."""

    relu: bool = False
    params: tuple[str, ...] = ("x", "bn")

    @property
    def key(self) -> str:  # type: ignore[override]
        return "batchnorm_relu" if self.relu else "batchnorm"

    @property
    def summary(self) -> str:  # type: ignore[override]
        return "Per-channel affine y = x * scale[c] + shift[c]" + (" followed by ReLU." if self.relu else ".")

    def kernel(self, style: Style, kname: str) -> str:
        names = _pick_names(
            style,
            {
                "x_ptr": ("x_ptr", "a"),
                "scale_ptr": ("scale_ptr", "b"),
                "shift_ptr": ("shift_ptr", "c"),
                "out_ptr": ("out_ptr", "d"),
                "n": ("n_elements", "n"),
                "C": ("n_channels", "C"),
                "HW": ("hw", "S"),
                "pid": ("pid", "p"),
                "offs": ("offsets", "o"),
                "mask": ("mask", "m"),
                "ch": ("channel", "k"),
                "a": ("x", "x"),
                "sc": ("scale", "g"),
                "sh": ("shift", "h"),
                "res": ("y", "y"),
            },
        )
        tokens = {**names, **_block_tokens(style, 1024), "kname": kname, "summary": self.summary}
        tokens["mk"] = f", mask={names['mask']}" if style.masks else ""
        flags = {"doc": style.comments, "mask": style.masks, "relu": self.relu}
        return _render(_AFFINE_KERNEL, flags, tokens, style.comments)

    def launch(self, style: Style, kname: str, args: tuple[str, ...], out: str) -> str:
        names = _pick_names(
            style, {"scale": ("scale", "sc"), "shift": ("shift", "sh"), "xc": ("x_c", "t"), "n": ("n_elements", "n")}
        )
        tokens = {**names, **_block_tokens(style, 1024), "kname": kname, "out": out, "arg0": args[0], "arg1": args[1]}
        return _render(_AFFINE_LAUNCH, {"cexpr": style.constexpr}, tokens, style.comments)


_CONV_KERNEL = '''\
@triton.jit
def {kname}(
    {x_ptr}, {w_ptr}{b_param}, {out_ptr},
    {NB}, {C_in}, {H}, {W}, {C_out}, {H_out}, {W_out},
    {stride}, {pad},
    {KH}{kconst}, {KW}{kconst}{bs_param},
):
    @@doc """{summary}
    @@doc
    @@doc Direct convolution over NCHW tensors: each program computes a block of output
    @@doc elements and loops over input channels and the kernel window.
    @@doc """
    {pid} = tl.program_id(0)
    {offs} = {pid} * {BS} + tl.arange(0, {BS})
    @@mask {mask} = {offs} < {NB} * {C_out} * {H_out} * {W_out}
    # Decompose the flat output index into (batch, out channel, row, column).
    {ow} = {offs} % {W_out}
    {oh} = ({offs} // {W_out}) % {H_out}
    {co} = ({offs} // ({W_out} * {H_out})) % {C_out}
    {nb} = {offs} // ({W_out} * {H_out} * {C_out})
    {acc} = tl.zeros(({BS},), dtype=tl.float32)
    for {ci} in range({C_in}):
        for {kh} in range({KH}):
            for {kw} in range({KW}):
                {ih} = {oh} * {stride} - {pad} + {kh}
                {iw} = {ow} * {stride} - {pad} + {kw}
                @@mask # Zero padding: positions outside the image contribute nothing.
                @@mask {inb} = {mask} & ({ih} >= 0) & ({ih} < {H}) & ({iw} >= 0) & ({iw} < {W})
                {xv} = tl.load({x_ptr} + (({nb} * {C_in} + {ci}) * {H} + {ih}) * {W} + {iw}{inbmask})
                {wv} = tl.load({w_ptr} + (({co} * {C_in} + {ci}) * {KH} + {kh}) * {KW} + {kw}{mk})
                {acc} += {xv} * {wv}
    @@bias {acc} += tl.load({b_ptr} + {co}{mk})
    @@relu {acc} = tl.maximum({acc}, 0.0)
    tl.store({out_ptr} + {offs}, {acc}{mk})'''

_CONV_LAUNCH = """\
{xc} = {arg0}.contiguous()
{wt} = {arg1}.weight
{NB}, {C_in}, {H}, {W} = {xc}.shape
{C_out}, _, {KH}, {KW} = {wt}.shape
{s} = {arg1}.stride[0]
{p} = {arg1}.padding[0]
{H_out} = ({H} + 2 * {p} - {KH}) // {s} + 1
{W_out} = ({W} + 2 * {p} - {KW}) // {s} + 1
{out} = torch.empty(({NB}, {C_out}, {H_out}, {W_out}), device={xc}.device, dtype={xc}.dtype)
@@cexpr BLOCK_SIZE = {block}
@@cexpr grid = (triton.cdiv({out}.numel(), BLOCK_SIZE),)
@@!cexpr grid = (({out}.numel() + {blockm1}) // {block},)
{kname}[grid]({xc}, {wt}{bias_arg}, {out}, {NB}, {C_in}, {H}, {W}, {C_out}, {H_out}, {W_out}, {s}, {p}, {KH}, {KW}{bs_kw})"""


@dataclass(frozen=True)
class _Conv2d(_Component):
    bias: bool = True
    relu: bool = False
    params: tuple[str, ...] = ("x", "conv")

    @property
    def key(self) -> str:  # type: ignore[override]
        return "conv2d" + ("_relu" if self.relu else "") + ("" if self.bias else "_nobias")

    @property
    def summary(self) -> str:  # type: ignore[override]
        return "2D convolution" + (" with bias" if self.bias else "") + (" fused with ReLU." if self.relu else ".")

    def kernel(self, style: Style, kname: str) -> str:
        names = _pick_names(
            style,
            {
                "x_ptr": ("x_ptr", "x"),
                "w_ptr": ("w_ptr", "w"),
                "b_ptr": ("b_ptr", "b"),
                "out_ptr": ("out_ptr", "y"),
                "NB": ("batch", "N"),
                "C_in": ("c_in", "C"),
                "H": ("height", "H"),
                "W": ("width", "W"),
                "C_out": ("c_out", "K"),
                "H_out": ("h_out", "P"),
                "W_out": ("w_out", "Q"),
                "stride": ("stride", "s"),
                "pad": ("padding", "d"),
                "KH": ("KH", "R"),
                "KW": ("KW", "T"),
                "pid": ("pid", "i"),
                "offs": ("offsets", "o"),
                "mask": ("mask", "m"),
                "ow": ("ow", "q"),
                "oh": ("oh", "p"),
                "co": ("oc", "k"),
                "nb": ("n", "n"),
                "acc": ("acc", "a"),
                "ci": ("ic", "c"),
                "kh": ("kh", "r"),
                "kw": ("kw", "t"),
                "ih": ("ih", "u"),
                "iw": ("iw", "v"),
                "inb": ("in_bounds", "z"),
                "xv": ("x_val", "e"),
                "wv": ("w_val", "f"),
            },
        )
        tokens = {**names, **_block_tokens(style, 128), "kname": kname, "summary": self.summary}
        tokens["kconst"] = ": tl.constexpr" if style.constexpr else ""
        tokens["mk"] = f", mask={names['mask']}" if style.masks else ""
        tokens["inbmask"] = f", mask={names['inb']}, other=0.0" if style.masks else ""
        tokens["b_param"] = f", {names['b_ptr']}" if self.bias else ""
        flags = {"doc": style.comments, "mask": style.masks, "bias": self.bias, "relu": self.relu}
        return _render(_CONV_KERNEL, flags, tokens, style.comments)

    def launch(self, style: Style, kname: str, args: tuple[str, ...], out: str) -> str:
        names = _pick_names(
            style,
            {
                "xc": ("x_c", "t"),
                "wt": ("weight", "w"),
                "NB": ("batch", "N"),
                "C_in": ("c_in", "C"),
                "H": ("height", "H"),
                "W": ("width", "W"),
                "C_out": ("c_out", "K"),
                "KH": ("kh", "R"),
                "KW": ("kw", "S"),
                "s": ("stride", "st"),
                "p": ("pad", "pd"),
                "H_out": ("h_out", "P"),
                "W_out": ("w_out", "Q"),
            },
        )
        tokens = {**names, **_block_tokens(style, 128), "kname": kname, "out": out, "arg0": args[0], "arg1": args[1]}
        tokens["bias_arg"] = f", {args[1]}.bias" if self.bias else ""
        return _render(_CONV_LAUNCH, {"cexpr": style.constexpr}, tokens, style.comments)


_ATTENTION_KERNEL = '''\
@triton.jit
def {kname}(
    {q_ptr}, {k_ptr}, {v_ptr}, {o_ptr},
    {seq_len}, {scale},
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    @@doc """{summary}
    @@doc
    @@doc Program ``(m, bh)`` computes ``BLOCK_M`` query rows of head ``bh``. Keys and values
    @@doc are streamed in tiles of ``BLOCK_N`` with an online softmax, so the full
    @@doc ``seq_len x seq_len`` score matrix is never written to memory.
    @@doc """
    {start_m} = tl.program_id(0)
    {bh} = tl.program_id(1)
    {base} = {bh} * {seq_len} * HEAD_DIM
    {offs_m} = {start_m} * BLOCK_M + tl.arange(0, BLOCK_M)
    {offs_d} = tl.arange(0, HEAD_DIM)
    {q_mask} = {offs_m}[:, None] < {seq_len}
    {q} = tl.load({q_ptr} + {base} + {offs_m}[:, None] * HEAD_DIM + {offs_d}[None, :], mask={q_mask}, other=0.0)
    # Running maximum, running denominator and the unnormalised output of the online softmax.
    {m_i} = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    {l_i} = tl.zeros((BLOCK_M,), dtype=tl.float32)
    {acc} = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
    for {start_n} in range(0, {seq_len}, BLOCK_N):
        {offs_n} = {start_n} + tl.arange(0, BLOCK_N)
        {kv_mask} = {offs_n}[:, None] < {seq_len}
        {k} = tl.load({k_ptr} + {base} + {offs_n}[:, None] * HEAD_DIM + {offs_d}[None, :], mask={kv_mask}, other=0.0)
        {qk} = tl.dot({q}, tl.trans({k})) * {scale}
        {qk} = tl.where({offs_n}[None, :] < {seq_len}, {qk}, float("-inf"))
        {m_new} = tl.maximum({m_i}, tl.max({qk}, axis=1))
        # Rescale what was accumulated so far to the new running maximum.
        {alpha} = tl.exp({m_i} - {m_new})
        {p} = tl.exp({qk} - {m_new}[:, None])
        {l_i} = {l_i} * {alpha} + tl.sum({p}, axis=1)
        {v} = tl.load({v_ptr} + {base} + {offs_n}[:, None] * HEAD_DIM + {offs_d}[None, :], mask={kv_mask}, other=0.0)
        {acc} = {acc} * {alpha}[:, None] + tl.dot({p}.to({v}.dtype), {v})
        {m_i} = {m_new}
    {acc} = {acc} / {l_i}[:, None]
    tl.store({o_ptr} + {base} + {offs_m}[:, None] * HEAD_DIM + {offs_d}[None, :], {acc}, mask={q_mask})'''

_ATTENTION_LAUNCH = """\
{shape} = {arg0}.shape
{qf} = {arg0}.reshape(-1, {shape}[-2], {shape}[-1]).contiguous()
{kf} = {arg1}.reshape(-1, {shape}[-2], {shape}[-1]).contiguous()
{vf} = {arg2}.reshape(-1, {shape}[-2], {shape}[-1]).contiguous()
{of} = torch.empty_like({qf})
{L} = {qf}.shape[1]
grid = (triton.cdiv({L}, 64), {qf}.shape[0])
{kname}[grid]({qf}, {kf}, {vf}, {of}, {L}, {scale}, HEAD_DIM={qf}.shape[2], BLOCK_M=64, BLOCK_N=64)
{out} = {of}.reshape({shape})"""


@dataclass(frozen=True)
class _FusedAttention(_Component):
    """softmax(q @ k^T * scale) @ v in one FlashAttention-style kernel (careful solutions only)."""

    params: tuple[str, ...] = ("q", "k", "v", "scale")  # scale: a float
    key: str = "flash_attention"
    summary: str = "Fused scaled dot-product attention (FlashAttention-style forward pass)."

    def kernel(self, style: Style, kname: str) -> str:
        names = {
            k: k
            for k in (
                "q_ptr k_ptr v_ptr o_ptr seq_len scale start_m bh base offs_m offs_d q_mask q m_i l_i acc "
                "start_n offs_n kv_mask k qk m_new alpha p v"
            ).split()
        }
        tokens = {**names, "kname": kname, "summary": self.summary}
        return _render(_ATTENTION_KERNEL, {"doc": style.comments}, tokens, style.comments)

    def launch(self, style: Style, kname: str, args: tuple[str, ...], out: str) -> str:
        names = {"shape": "shape", "qf": "q_flat", "kf": "k_flat", "vf": "v_flat", "of": "o_flat", "L": "seq_len"}
        tokens = {**names, "kname": kname, "out": out, "arg0": args[0], "arg1": args[1], "arg2": args[2]}
        tokens["scale"] = args[3]
        return _render(_ATTENTION_LAUNCH, {}, tokens, style.comments)


# ============================================================================================
# Module templates (the problems)
# ============================================================================================


@dataclass(frozen=True)
class _Call:
    """A solution ``forward`` step: ``out = component(*args)`` at some indentation."""

    comp: _Component
    args: tuple[str, ...]
    out: str
    indent: int = 0


@dataclass
class _Module:
    """One KernelBook-style problem and how its solutions are written."""

    level: int
    kind: str
    name: str
    desc: str  # "applies ReLU elementwise" (for explanations and reasoning)
    init_params: str  # after ``self``, e.g. "dim=1, eps=1e-05" ('' for none)
    init_lines: list[str]
    fwd_params: str
    fwd_lines: list[str]
    inputs: list[tuple[int, ...]]
    init_kwargs: str  # the dict literal of get_init_inputs(), e.g. "{'dim': 1}"
    steps: list[Any]  # solution forward steps: str lines or _Call
    ref_ops: list[tuple]  # the inductor reference translation (see _inductor_code)
    ref_params: list[str] = field(default_factory=list)  # parameters the reference passes to call()
    doc: str | None = None
    prelude: str = ""  # helper classes of the PyTorch module, defined before it
    new_prelude: str = ""  # helper classes of the Triton solution
    new_init_lines: list[str] | None = None
    fast_steps: list[Any] | None = None  # what careful ("good") solutions do instead of ``steps``
    python_code: str = ""
    triton_code: str = ""


_SHAPES_4D = [(4, 4, 4, 4)] * 4 + [(2, 4, 8, 8), (8, 4, 4, 4), (4, 8, 16, 16), (2, 16, 8, 8), (4, 4, 8, 8), (16, 4, 4, 4)]
_SHAPES_ANY = _SHAPES_4D + [(4, 4), (64, 64), (4, 16, 32), (8, 128), (4, 4, 4)]


def _dims_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


_DOC_OPENERS = ("", "Simple ", "A small ", "Custom ", "Minimal ")


def _doc(rng: random.Random, text: str) -> str | None:
    """A class docstring, present in most KernelBook modules (their repositories document them)."""
    if rng.random() < 0.2:
        return None
    opener = rng.choice(_DOC_OPENERS)
    body = (opener + text[0].lower() + text[1:]) if opener else text
    if rng.random() < 0.5:
        body += _ARGS_DOC
    return body


# --- level 0: trivial ------------------------------------------------------------------------

_COPY = _Pointwise("copy", "{a}", summary="Copy the input to the output unchanged.")


def _t_identity(rng: random.Random, name: str | None) -> _Module:
    name = name or rng.choice(["Identity", "PassThrough", "IdentityLayer", "NoOp", "Passthrough", "IdentityBlock"])
    shape = rng.choice(_SHAPES_ANY)
    fwd = rng.choice([["return x"], ["out = x", "return out"]])
    return _Module(
        0, "identity", name, "returns its input unchanged", "", [], "x", fwd, [shape], "{}",
        steps=[_Call(_COPY, ("x",), "out"), "return out"],
        ref_ops=[("poi", "copy", 1, "{a}")],
        doc=_doc(rng, "Identity layer that returns the input unchanged, used as a placeholder."),
    )  # fmt: skip


def _t_clone(rng: random.Random, name: str | None) -> _Module:
    name = name or rng.choice(["CloneModule", "Copy", "TensorCopy", "CopyLayer", "Clone"])
    shape = rng.choice(_SHAPES_ANY)
    return _Module(
        0, "clone", name, "returns a copy of its input", "", [], "x", [rng.choice(["return x.clone()", "return torch.clone(x)"])],
        [shape], "{}",
        steps=[_Call(_COPY, ("x",), "out"), "return out"],
        ref_ops=[("poi", "clone", 1, "{a}")],
        doc=_doc(rng, "Returns a copy of the input tensor so that later in-place ops do not alias it."),
    )  # fmt: skip


def _t_flatten(rng: random.Random, name: str | None) -> _Module:
    name = name or rng.choice(["Flatten", "FlattenLayer", "View", "Reshape", "Flatten2d"])
    shape = rng.choice(_SHAPES_4D)
    fwd = rng.choice(["return x.view(x.size(0), -1)", "return x.reshape(x.shape[0], -1)", "return torch.flatten(x, 1)"])
    return _Module(
        0, "flatten", name, "flattens every dimension after the batch dimension", "", [], "x", [fwd], [shape], "{}",
        steps=[_Call(_COPY, ("x",), "out"), "return out.view(out.shape[0], -1)"],
        ref_ops=[("poi", "view", 1, "{a}")],
        doc=_doc(rng, "Flattens all dimensions except the batch dimension."),
    )  # fmt: skip


# --- level 1: elementwise --------------------------------------------------------------------


def _unary_ops(rng: random.Random) -> list[tuple]:
    """(kind, names, init_params, init_lines, init_kwargs, torch forward expressions, triton expr, desc)."""
    slope = rng.choice([0.01, 0.02, 0.1, 0.2, 0.3])
    lo, hi = rng.choice([(-1.0, 1.0), (0.0, 6.0), (-0.5, 0.5), (-2.0, 2.0), (0.0, 1.0)])
    scale, shift = rng.choice([0.5, 2.0, 1.5, 3.0, 0.1]), rng.choice([0.0, 1.0, -0.5, 0.25])
    alpha = rng.choice([1.0, 0.5, 0.2])
    return [
        ("relu", ["ReLU", "Relu", "ReLULayer", "MyReLU", "ReluActivation"], "", [], "{}",
         ["torch.relu(x)", "F.relu(x)", "x.clamp(min=0)"], "tl.maximum({a}, 0.0)", "applies ReLU elementwise"),
        ("sigmoid", ["Sigmoid", "SigmoidLayer", "Gate", "SigmoidActivation"], "", [], "{}",
         ["torch.sigmoid(x)", "x.sigmoid()"], "1.0 / (1.0 + tl.exp(-{a}))", "applies the logistic sigmoid elementwise"),
        ("tanh", ["Tanh", "TanhLayer", "TanhActivation"], "", [], "{}",
         ["torch.tanh(x)", "x.tanh()"], "2.0 / (1.0 + tl.exp(-2.0 * {a})) - 1.0", "applies tanh elementwise"),
        ("leaky_relu", ["LeakyReLU", "LeakyRelu", "LReLU", "LeakyActivation"], f"negative_slope={slope}",
         ["self.negative_slope = negative_slope"], f"{{'negative_slope': {slope}}}",
         ["F.leaky_relu(x, self.negative_slope)", "torch.where(x > 0, x, x * self.negative_slope)"],
         f"tl.where({{a}} > 0, {{a}}, {{a}} * {slope})", f"applies leaky ReLU with slope {slope}"),
        ("clamp", ["Clamp", "ClampLayer", "ClipValues", "Hardtanh"], f"min_val={lo}, max_val={hi}",
         ["self.min_val = min_val", "self.max_val = max_val"], f"{{'min_val': {lo}, 'max_val': {hi}}}",
         ["torch.clamp(x, self.min_val, self.max_val)", "x.clamp(min=self.min_val, max=self.max_val)"],
         f"tl.minimum(tl.maximum({{a}}, {lo}), {hi})", f"clamps its input to [{lo}, {hi}]"),
        ("relu6", ["ReLU6", "Relu6", "BoundedReLU"], "", [], "{}",
         ["F.relu6(x)", "torch.clamp(x, 0.0, 6.0)"], "tl.minimum(tl.maximum({a}, 0.0), 6.0)", "applies ReLU6 elementwise"),
        ("abs", ["Abs", "AbsLayer", "Absolute"], "", [], "{}",
         ["torch.abs(x)", "x.abs()"], "tl.abs({a})", "takes the absolute value elementwise"),
        ("square", ["Square", "SquareLayer", "Pow2"], "", [], "{}",
         ["x * x", "x ** 2", "torch.pow(x, 2)"], "{a} * {a}", "squares its input elementwise"),
        ("exp", ["Exp", "ExpLayer", "Exponential"], "", [], "{}",
         ["torch.exp(x)", "x.exp()"], "tl.exp({a})", "applies exp elementwise"),
        ("swish", ["Swish", "SiLU", "SiLUActivation", "SwishActivation"], "", [], "{}",
         ["x * torch.sigmoid(x)", "F.silu(x)"], "{a} / (1.0 + tl.exp(-{a}))", "applies Swish (x * sigmoid(x))"),
        ("scale_shift", ["ScaleShift", "Affine", "ScaleAndShift", "Rescale"], f"scale={scale}, shift={shift}",
         ["self.scale = scale", "self.shift = shift"], f"{{'scale': {scale}, 'shift': {shift}}}",
         ["x * self.scale + self.shift"], f"{{a}} * {scale} + {shift}", f"computes x * {scale} + {shift}"),
        ("hardsigmoid", ["HardSigmoid", "Hsigmoid", "HSigmoid"], "", [], "{}",
         ["F.relu6(x + 3.0) / 6.0", "F.hardsigmoid(x)"], "tl.minimum(tl.maximum({a} + 3.0, 0.0), 6.0) / 6.0",
         "applies the hard sigmoid elementwise"),
        ("softsign", ["Softsign", "SoftSign"], "", [], "{}",
         ["x / (1 + torch.abs(x))", "F.softsign(x)"], "{a} / (1.0 + tl.abs({a}))", "applies softsign elementwise"),
        ("elu", ["ELU", "Elu", "ELUActivation"], f"alpha={alpha}", ["self.alpha = alpha"], f"{{'alpha': {alpha}}}",
         ["F.elu(x, self.alpha)"], f"tl.where({{a}} > 0, {{a}}, {alpha} * (tl.exp({{a}}) - 1.0))",
         f"applies ELU with alpha={alpha}"),
    ]  # fmt: skip


def _t_unary(rng: random.Random, name: str | None) -> _Module:
    ops = _unary_ops(rng)
    kind, names, init_params, init_lines, init_kwargs, torch_exprs, expr, desc = rng.choice(ops)
    name = name or rng.choice(names)
    shape = rng.choice(_SHAPES_ANY)
    comp = _Pointwise(kind, expr, summary=f"Elementwise {kind.replace('_', ' ')}.")
    return _Module(
        1, kind, name, desc, init_params, list(init_lines), "x", [f"return {rng.choice(torch_exprs)}"],
        [shape], init_kwargs,
        steps=[_Call(comp, ("x",), "out"), "return out"],
        ref_ops=[("poi", kind, 1, expr)],
        doc=_doc(rng, f"Module that {desc}."),
    )  # fmt: skip


def _binary_ops(rng: random.Random) -> list[tuple]:
    eps = rng.choice([1e-6, 1e-8, 1e-5])
    alpha = rng.choice([0.5, 0.25, 0.9, 0.1])
    return [
        ("add", ["Add", "AddLayer", "Sum2", "ElementwiseAdd", "Residual"], "", [], "{}",
         ["x + y", "torch.add(x, y)"], "{a} + {b}", "adds its two inputs elementwise"),
        ("mul", ["Mul", "Multiply", "ElementwiseMul", "Hadamard"], "", [], "{}",
         ["x * y", "torch.mul(x, y)"], "{a} * {b}", "multiplies its two inputs elementwise"),
        ("sub", ["Sub", "Subtract", "Difference"], "", [], "{}",
         ["x - y", "torch.sub(x, y)"], "{a} - {b}", "subtracts its second input from the first"),
        ("div", ["Div", "Divide", "SafeDiv"], f"eps={eps}", ["self.eps = eps"], f"{{'eps': {eps}}}",
         ["x / (y + self.eps)"], f"{{a}} / ({{b}} + {eps})", "divides x by y + eps elementwise"),
        ("maximum", ["Maximum", "Max2", "ElementwiseMax"], "", [], "{}",
         ["torch.max(x, y)", "torch.maximum(x, y)"], "tl.maximum({a}, {b})", "takes the elementwise maximum of two tensors"),
        ("add_relu", ["AddReLU", "ResidualReLU", "AddAct"], "", [], "{}",
         ["F.relu(x + y)", "torch.relu(x + y)"], "tl.maximum({a} + {b}, 0.0)", "adds two tensors and applies ReLU"),
        ("lerp", ["WeightedSum", "Lerp", "Blend"], f"alpha={alpha}", ["self.alpha = alpha"], f"{{'alpha': {alpha}}}",
         ["self.alpha * x + (1 - self.alpha) * y"], f"{alpha} * {{a}} + {1 - alpha} * {{b}}",
         f"blends two tensors with weight {alpha}"),
        ("sqdiff", ["SquaredDifference", "SqDiff", "SquaredError"], "", [], "{}",
         ["(x - y) ** 2", "(x - y) * (x - y)"], "({a} - {b}) * ({a} - {b})", "computes the squared difference elementwise"),
    ]  # fmt: skip


def _t_binary(rng: random.Random, name: str | None) -> _Module:
    kind, names, init_params, init_lines, init_kwargs, torch_exprs, expr, desc = rng.choice(_binary_ops(rng))
    name = name or rng.choice(names)
    shape = rng.choice(_SHAPES_ANY)
    comp = _Pointwise(kind, expr, arity=2, summary=f"Elementwise {kind.replace('_', ' ')} of two tensors.")
    return _Module(
        1, kind, name, desc, init_params, list(init_lines), "x, y", [f"return {rng.choice(torch_exprs)}"],
        [shape, shape], init_kwargs,
        steps=[_Call(comp, ("x", "y"), "out"), "return out"],
        ref_ops=[("poi", kind, 2, expr)],
        doc=_doc(rng, f"Module that {desc}."),
    )  # fmt: skip


# --- level 2: reductions ---------------------------------------------------------------------

_REDUCE_TORCH = {
    "sum": (["ReduceSum", "SumDim", "SumLayer", "SumPool"], ["torch.sum(x, dim=self.dim{kd})", "x.sum(self.dim{kd})"], "sums"),
    "mean": (["ReduceMean", "MeanDim", "Mean", "AvgOverDim"], ["torch.mean(x, dim=self.dim{kd})", "x.mean(self.dim{kd})"], "averages"),
    "max": (["ReduceMax", "MaxDim", "MaxOverDim"], ["torch.max(x, dim=self.dim{kd})[0]", "x.amax(dim=self.dim{kd})"], "takes the maximum"),
    "min": (["ReduceMin", "MinDim", "MinOverDim"], ["torch.min(x, dim=self.dim{kd})[0]", "x.amin(dim=self.dim{kd})"], "takes the minimum"),
    "l2norm": (["L2Norm", "NormLayer", "VectorNorm"], ["torch.norm(x, p=2, dim=self.dim{kd})", "x.norm(dim=self.dim{kd})"],
               "computes the L2 norm"),
}  # fmt: skip


def _t_reduce(rng: random.Random, name: str | None) -> _Module:
    op = rng.choice(list(_REDUCE_TORCH))
    names, exprs, verb = _REDUCE_TORCH[op]
    name = name or rng.choice(names)
    shape = rng.choice(_SHAPES_4D + [(4, 16, 32), (8, 128), (4, 4, 4)])
    dim = rng.choice([d for d in range(1, len(shape))] + [-1])
    keepdim = rng.random() < 0.3
    last = dim in (-1, len(shape) - 1)
    comp = _RowReduce(op, dim, move=not last, cols=shape[dim])
    steps: list[Any] = [_Call(comp, ("x",), "out")]
    steps.append(f"return out.unsqueeze({dim})" if keepdim else "return out")
    return _Module(
        2, f"reduce_{op}", name, f"{verb} over dimension {dim}", f"dim={dim}", ["self.dim = dim"], "x",
        [f"return {rng.choice(exprs).format(kd=', keepdim=True' if keepdim else '')}"], [shape], f"{{'dim': {dim}}}",
        steps=steps,
        ref_ops=[("per", op, _REDUCE_OPS[op][0])],
        doc=_doc(rng, f"Reduction module: {verb} over a fixed dimension."),
    )  # fmt: skip


def _t_global_pool(rng: random.Random, name: str | None) -> _Module:
    name = name or rng.choice(["GlobalAvgPool2d", "GlobalAveragePooling", "GAP", "GlobalAvgPool"])
    shape = rng.choice(_SHAPES_4D)
    fwd = rng.choice(["return x.mean(dim=(2, 3))", "return F.adaptive_avg_pool2d(x, 1).view(x.size(0), -1)"])
    comp = _RowReduce("mean", -1, move=False, cols=shape[2] * shape[3])
    return _Module(
        2, "global_avg_pool", name, "averages each channel over its spatial positions", "", [], "x", [fwd],
        [shape], "{}",
        steps=["x_flat = x.reshape(x.shape[0], x.shape[1], -1)", _Call(comp, ("x_flat",), "out"), "return out"],
        ref_ops=[("per", "mean", _REDUCE_OPS["mean"][0])],
        doc=_doc(rng, "Global average pooling over the spatial dimensions of an NCHW tensor."),
    )  # fmt: skip


# --- level 3: moderate -----------------------------------------------------------------------


def _t_softmax(rng: random.Random, name: str | None) -> _Module:
    op = rng.choice(["softmax", "log_softmax"])
    shape = rng.choice(_SHAPES_4D + [(4, 16, 32), (8, 128), (16, 64)])
    dim = rng.choice([1, -1, len(shape) - 1])
    last = dim in (-1, len(shape) - 1)
    if op == "softmax":
        name = name or rng.choice(["Softmax", "SoftmaxLayer", "MySoftmax", "SoftmaxDim"])
        fwd = rng.choice(["F.softmax(x, dim=self.dim)", "torch.softmax(x, self.dim)", "x.softmax(dim=self.dim)"])
    else:
        name = name or rng.choice(["LogSoftmax", "LogSoftmaxLayer", "LogProbs"])
        fwd = rng.choice(["F.log_softmax(x, dim=self.dim)", "torch.log_softmax(x, self.dim)"])
    comp = _RowNorm(op, dim=dim, move=not last, cols=shape[dim])
    return _Module(
        3, op, name, f"applies {op.replace('_', '-')} over dimension {dim}", f"dim={dim}", ["self.dim = dim"], "x",
        [f"return {fwd}"], [shape], f"{{'dim': {dim}}}",
        steps=[_Call(comp, ("x",), "out"), "return out"],
        ref_ops=[("norm", op)],
        doc=_doc(rng, f"Applies {op.replace('_', '-')} along a fixed dimension."),
    )  # fmt: skip


def _t_layernorm(rng: random.Random, name: str | None) -> _Module:
    features = rng.choice([4, 8, 16, 32, 64, 128])
    eps = rng.choice([1e-6, 1e-5, 1e-12])
    shape = rng.choice([(4, 4, features), (4, features), (2, 8, features), (4, 4, 4, features)])
    if rng.random() < 0.5:
        # The Annotated Transformer's LayerNorm (note: unbiased std, eps outside the sqrt).
        name = name or rng.choice(["LayerNorm", "Norm", "LayerNormalization", "LayerNorm2"])
        init = ["self.a_2 = nn.Parameter(torch.ones(features))", "self.b_2 = nn.Parameter(torch.zeros(features))", "self.eps = eps"]
        fwd = ["mean = x.mean(-1, keepdim=True)", "std = x.std(-1, keepdim=True)", "return self.a_2 * (x - mean) / (std + self.eps) + self.b_2"]
        args = ("x", "self.a_2", "self.b_2")
        params = ["self.a_2", "self.b_2"]
    else:
        name = name or rng.choice(["LayerNorm", "LayerNormWrapper", "LNorm", "PreNorm"])
        init = ["self.norm = nn.LayerNorm(features, eps=eps)"]
        fwd = ["return self.norm(x)"]
        args = ("x", "self.norm.weight", "self.norm.bias")
        params = ["self.norm.weight", "self.norm.bias"]
    comp = _RowNorm("layernorm", cols=features, eps=eps)
    return _Module(
        3, "layernorm", name, f"applies layer normalisation over the last dimension ({features} features, eps={eps})",
        f"features, eps={eps}", init, "x", fwd, [shape], f"{{'features': {features}}}",
        steps=[_Call(comp, args, "out"), "return out"],
        ref_ops=[("norm", "layernorm")], ref_params=params,
        doc=_doc(rng, "Construct a layernorm module."),
    )  # fmt: skip


def _t_rmsnorm(rng: random.Random, name: str | None) -> _Module:
    name = name or rng.choice(["RMSNorm", "RMSNormLayer", "T5LayerNorm", "LlamaRMSNorm"])
    dim = rng.choice([8, 16, 32, 64, 128])
    eps = rng.choice([1e-6, 1e-5, 1e-8])
    shape = rng.choice([(4, 4, dim), (2, 16, dim), (4, dim)])
    comp = _RowNorm("rmsnorm", cols=dim, eps=eps)
    return _Module(
        3, "rmsnorm", name, f"applies RMS normalisation with a learned scale (dim={dim}, eps={eps})",
        f"dim, eps={eps}", ["self.eps = eps", "self.weight = nn.Parameter(torch.ones(dim))"], "x",
        ["variance = x.pow(2).mean(-1, keepdim=True)", "x = x * torch.rsqrt(variance + self.eps)", "return self.weight * x"],
        [shape], f"{{'dim': {dim}}}",
        steps=[_Call(comp, ("x", "self.weight"), "out"), "return out"],
        ref_ops=[("norm", "rmsnorm")], ref_params=["self.weight"],
        doc=_doc(rng, "Root mean square layer normalization (no mean subtraction, no bias)."),
    )  # fmt: skip


def _t_l2normalize(rng: random.Random, name: str | None) -> _Module:
    name = name or rng.choice(["L2Normalize", "Normalize", "NormalizeLayer", "L2Norm"])
    shape = rng.choice(_SHAPES_4D + [(8, 128), (4, 64)])
    dim = rng.choice([1, -1])
    last = dim == -1 or len(shape) == 2
    comp = _RowNorm("l2normalize", dim=dim, move=not last, cols=shape[dim], eps=1e-12)
    return _Module(
        3, "l2normalize", name, f"divides each vector along dimension {dim} by its L2 norm", f"dim={dim}",
        ["self.dim = dim"], "x", [rng.choice(["return F.normalize(x, p=2, dim=self.dim)", "return F.normalize(x, dim=self.dim)"])],
        [shape], f"{{'dim': {dim}}}",
        steps=[_Call(comp, ("x",), "out"), "return out"],
        ref_ops=[("norm", "l2normalize")],
        doc=_doc(rng, "L2-normalises its input along a dimension."),
    )  # fmt: skip


def _t_batchnorm_relu(rng: random.Random, name: str | None) -> _Module:
    name = name or rng.choice(["BatchNormReLU", "BNReLU", "BnAct", "NormAct"])
    shape = rng.choice(_SHAPES_4D)
    channels = shape[1]
    return _Module(
        3, "batchnorm_relu", name, f"applies BatchNorm2d over {channels} channels followed by ReLU",
        "num_features", ["self.bn = nn.BatchNorm2d(num_features)", "self.relu = nn.ReLU(inplace=True)"], "x",
        ["return self.relu(self.bn(x))"], [shape], f"{{'num_features': {channels}}}",
        steps=[_Call(_ChannelAffine(relu=True), ("x", "self.bn"), "out"), "return out"],
        ref_ops=[("poi", "_native_batch_norm_legit_no_training_relu", 1, "tl.maximum({a}, 0.0)")],
        ref_params=["self.bn.weight", "self.bn.bias", "self.bn.running_mean", "self.bn.running_var"],
        doc=_doc(rng, "BatchNorm2d followed by an in-place ReLU."),
    )  # fmt: skip


def _t_mlp(rng: random.Random, name: str | None) -> _Module:
    d_in = rng.choice([4, 16, 32, 64])
    hidden = d_in * rng.choice([2, 4])
    d_out = rng.choice([d_in, 4, 8, 10])
    act = rng.choice(["gelu", "gelu", "relu"])
    shape = rng.choice([(4, 4, d_in), (8, d_in), (2, 16, d_in), (4, 4, 4, d_in)])
    name = name or rng.choice(["Mlp", "MLP", "FeedForward", "PositionwiseFeedForward", "FFN"])
    act_module = "nn.GELU()" if act == "gelu" else "nn.ReLU()"
    return _Module(
        3, f"mlp_{act}", name, f"applies Linear({d_in}, {hidden}) -> {act.upper()} -> Linear({hidden}, {d_out})",
        f"in_features, hidden_features, out_features, drop=0.0",
        ["self.fc1 = nn.Linear(in_features, hidden_features)", f"self.act = {act_module}",
         "self.fc2 = nn.Linear(hidden_features, out_features)", "self.drop = nn.Dropout(drop)"], "x",
        ["x = self.fc1(x)", "x = self.act(x)", "x = self.drop(x)", "x = self.fc2(x)", "x = self.drop(x)", "return x"],
        [shape], f"{{'in_features': {d_in}, 'hidden_features': {hidden}, 'out_features': {d_out}}}",
        steps=[
            _Call(_Matmul(bias=True, act=act), ("x", "self.fc1.weight", "self.fc1.bias"), "h"),
            "# Dropout is the identity at inference time." if rng.random() < 0.5 else "h = self.drop(h)",
            _Call(_Matmul(bias=True), ("h", "self.fc2.weight", "self.fc2.bias"), "out"),
            "return out",
        ],
        ref_ops=[("extern", "addmm"), ("poi", act, 1, _ACTIVATIONS[act].format(acc="{a}")), ("extern", "addmm")],
        ref_params=["self.fc1.weight", "self.fc1.bias", "self.fc2.weight", "self.fc2.bias"],
        doc=_doc(rng, "MLP as used in Vision Transformer, MLP-Mixer and related networks."),
    )  # fmt: skip


def _t_linear_relu(rng: random.Random, name: str | None) -> _Module:
    d_in = rng.choice([4, 8, 16, 32, 64])
    d_out = rng.choice([4, 8, 16, 32, 64, 128])
    shape = rng.choice([(4, d_in), (4, 4, d_in), (16, d_in), (4, 4, 4, d_in)])
    name = name or rng.choice(["LinearReLU", "Dense", "FCLayer", "LinearBlock"])
    return _Module(
        3, "linear_relu", name, f"applies Linear({d_in}, {d_out}) followed by ReLU", "in_features, out_features",
        ["self.linear = nn.Linear(in_features, out_features)"], "x", [rng.choice(["return F.relu(self.linear(x))", "return torch.relu(self.linear(x))"])],
        [shape], f"{{'in_features': {d_in}, 'out_features': {d_out}}}",
        steps=[_Call(_Matmul(bias=True, act="relu"), ("x", "self.linear.weight", "self.linear.bias"), "out"), "return out"],
        ref_ops=[("extern", "addmm"), ("poi", "relu", 1, "tl.maximum({a}, 0.0)")],
        ref_params=["self.linear.weight", "self.linear.bias"],
        doc=_doc(rng, "Fully connected layer with a ReLU activation."),
    )  # fmt: skip


# --- level 4: complex ------------------------------------------------------------------------


def _softmax_comp(cols: int) -> _RowNorm:
    return _RowNorm("softmax", dim=-1, move=False, cols=cols)


def _t_sdpa(rng: random.Random, name: str | None) -> _Module:
    name = name or rng.choice(["ScaledDotProductAttention", "Attention", "DotProductAttention", "SDPA"])
    b, h, seq, d = rng.choice([(4, 4, 4, 4), (2, 4, 16, 16), (2, 8, 32, 16), (1, 4, 64, 32), (4, 2, 8, 8)])
    temperature = rng.choice(["d_k ** 0.5", "8.0", "temperature"])
    if temperature == "temperature":
        init_params, init_lines, kwargs, scale = "temperature", ["self.temperature = temperature"], f"{{'temperature': {math.sqrt(d)}}}", "1.0 / self.temperature"
    elif temperature == "8.0":
        init_params, init_lines, kwargs, scale = "", [], "{}", "0.125"
    else:
        init_params, init_lines, kwargs, scale = f"d_k={d}", ["self.temperature = d_k ** 0.5"], "{}", "1.0 / self.temperature"
    scaled = "q / self.temperature" if init_lines else "q / 8.0"
    return _Module(
        4, "sdpa", name, f"computes softmax(q k^T / temperature) v over {h} heads of dimension {d}",
        init_params, init_lines, "q, k, v",
        [f"attn = torch.matmul({scaled}, k.transpose(2, 3))", "attn = F.softmax(attn, dim=-1)", "output = torch.matmul(attn, v)", "return output"],
        [(b, h, seq, d)] * 3, kwargs,
        steps=[
            f"scores = torch.matmul(q, k.transpose(-2, -1)) * {scale}",
            _Call(_softmax_comp(seq), ("scores",), "attn"),
            "return torch.matmul(attn, v)",
        ],
        fast_steps=[_Call(_FusedAttention(), ("q", "k", "v", scale), "out"), "return out"],
        ref_ops=[("extern", "bmm"), ("norm", "softmax"), ("extern", "bmm")],
        doc=_doc(rng, "Scaled Dot-Product Attention."),
    )  # fmt: skip


def _t_mha(rng: random.Random, name: str | None) -> _Module:
    name = name or rng.choice(["MultiHeadAttention", "MultiHeadedAttention", "SelfAttention", "MHSA"])
    embed, heads = rng.choice([(16, 2), (32, 4), (64, 4), (64, 8), (128, 8), (16, 4)])
    b, seq = rng.choice([(2, 8), (4, 4), (2, 16), (1, 32)])
    hd = embed // heads
    init = [
        "assert embed_dim % num_heads == 0",
        "self.num_heads = num_heads",
        "self.head_dim = embed_dim // num_heads",
        "self.q_proj = nn.Linear(embed_dim, embed_dim)",
        "self.k_proj = nn.Linear(embed_dim, embed_dim)",
        "self.v_proj = nn.Linear(embed_dim, embed_dim)",
        "self.out_proj = nn.Linear(embed_dim, embed_dim)",
    ]
    fwd = [
        "B, L, E = x.shape",
        "q = self.q_proj(x).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)",
        "k = self.k_proj(x).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)",
        "v = self.v_proj(x).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)",
        "scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)",
        "attn = torch.softmax(scores, dim=-1)",
        "out = torch.matmul(attn, v).transpose(1, 2).contiguous().view(B, L, E)",
        "return self.out_proj(out)",
    ]
    lin = _Matmul(bias=True)
    head = [
        "B, L, E = x.shape",
        _Call(lin, ("x", "self.q_proj.weight", "self.q_proj.bias"), "q"),
        _Call(lin, ("x", "self.k_proj.weight", "self.k_proj.bias"), "k"),
        _Call(lin, ("x", "self.v_proj.weight", "self.v_proj.bias"), "v"),
        "q = q.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)",
        "k = k.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)",
        "v = v.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)",
    ]
    tail = ["ctx = ctx.transpose(1, 2).reshape(B, L, E)", _Call(lin, ("ctx", "self.out_proj.weight", "self.out_proj.bias"), "out"), "return out"]
    return _Module(
        4, "mha", name, f"is multi-head self-attention with {heads} heads over embedding size {embed}",
        "embed_dim, num_heads", init, "x", fwd, [(b, seq, embed)], f"{{'embed_dim': {embed}, 'num_heads': {heads}}}",
        steps=head + [
            "scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)",
            _Call(_softmax_comp(seq), ("scores",), "attn"),
            "ctx = torch.matmul(attn, v)",
        ] + tail,
        fast_steps=head + [_Call(_FusedAttention(), ("q", "k", "v", "1.0 / math.sqrt(self.head_dim)"), "ctx")] + tail,
        ref_ops=[("extern", "addmm"), ("extern", "addmm"), ("extern", "addmm"), ("extern", "bmm"), ("norm", "softmax"),
                 ("extern", "bmm"), ("extern", "addmm")],
        ref_params=[f"self.{p}_proj.{t}" for p in ("q", "k", "v", "out") for t in ("weight", "bias")],
        doc=_doc(rng, f"Multi-head self-attention (head dimension {hd})."),
    )  # fmt: skip


def _t_conv(rng: random.Random, name: str | None) -> _Module:
    name = name or rng.choice(["Conv2d", "ConvLayer", "Conv", "BasicConv2d", "ConvModule"])
    cin, cout = rng.choice([(4, 4), (3, 16), (4, 8), (16, 32), (8, 8)])
    k, stride, pad = rng.choice([(3, 1, 1), (1, 1, 0), (3, 2, 1), (5, 1, 2), (4, 1, 0)])
    size = rng.choice([4, 8, 16, 32]) if k < 5 else rng.choice([8, 16, 32])
    relu = rng.random() < 0.4
    fwd = ["x = self.conv(x)", "return F.relu(x)"] if relu else ["return self.conv(x)"]
    return _Module(
        4, "conv2d_relu" if relu else "conv2d", name,
        f"applies Conv2d({cin}, {cout}, kernel_size={k}, stride={stride}, padding={pad})" + (" and ReLU" if relu else ""),
        "in_channels, out_channels, kernel_size, stride=1, padding=0",
        ["self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)"], "x", fwd,
        [(rng.choice([1, 2, 4]), cin, size, size)],
        f"{{'in_channels': {cin}, 'out_channels': {cout}, 'kernel_size': {k}, 'stride': {stride}, 'padding': {pad}}}",
        steps=[_Call(_Conv2d(bias=True, relu=relu), ("x", "self.conv"), "out"), "return out"],
        ref_ops=[("extern", "convolution"), ("poi", "convolution_relu" if relu else "convolution", 1,
                                             "tl.maximum({a}, 0.0)" if relu else "{a}")],
        ref_params=["self.conv.weight", "self.conv.bias"],
        doc=_doc(rng, "Convolution layer wrapper."),
    )  # fmt: skip


def _t_conv_bn_relu(rng: random.Random, name: str | None) -> _Module:
    name = name or rng.choice(["ConvBNReLU", "ConvBnRelu", "ConvBlock", "BasicConv", "ConvNormAct"])
    cin, cout = rng.choice([(4, 4), (3, 16), (4, 8), (16, 32), (8, 16)])
    k, pad = rng.choice([(3, 1), (1, 0), (5, 2)])
    size = rng.choice([4, 8, 16, 32])
    return _Module(
        4, "conv_bn_relu", name, f"applies Conv2d({cin}, {cout}, {k}) without bias, BatchNorm2d and ReLU",
        "in_planes, out_planes, kernel_size=3, padding=1",
        ["self.conv = nn.Conv2d(in_planes, out_planes, kernel_size, padding=padding, bias=False)",
         "self.bn = nn.BatchNorm2d(out_planes)", "self.relu = nn.ReLU(inplace=True)"], "x",
        ["x = self.conv(x)", "x = self.bn(x)", "x = self.relu(x)", "return x"],
        [(rng.choice([1, 2, 4]), cin, size, size)],
        f"{{'in_planes': {cin}, 'out_planes': {cout}, 'kernel_size': {k}, 'padding': {pad}}}",
        steps=[_Call(_Conv2d(bias=False), ("x", "self.conv"), "h"), _Call(_ChannelAffine(relu=True), ("h", "self.bn"), "out"), "return out"],
        ref_ops=[("extern", "convolution"), ("poi", "_native_batch_norm_legit_no_training_relu", 1, "tl.maximum({a}, 0.0)")],
        ref_params=["self.conv.weight", "self.bn.weight", "self.bn.bias", "self.bn.running_mean", "self.bn.running_var"],
        doc=_doc(rng, "Conv2d + BatchNorm2d + ReLU block."),
    )  # fmt: skip


# --- level 5: advanced (whole architectures) -------------------------------------------------

_BASIC_BLOCK = '''\
class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions with batch norm and an identity shortcut."""
    expansion = 1

    def __init__(self, planes):
        super().__init__()
        self.conv1 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, x):
        identity = x
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return F.relu(out)
'''

_BASIC_BLOCK_NEW = '''\
class BasicBlockParams(nn.Module):
    """Holds the parameters of one residual block; the computation lives in forward() below."""

    def __init__(self, planes):
        super().__init__()
        self.conv1 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
'''


def _t_resnet(rng: random.Random, name: str | None) -> _Module:
    name = name or rng.choice(["ResNetStack", "ResidualStack", "ResNetBackbone", "TinyResNet", "ResNet"])
    cin = rng.choice([3, 4])
    width = rng.choice([8, 16, 32])
    blocks = rng.choice([2, 3, 4])
    classes = rng.choice([10, 4, 100])
    size = rng.choice([8, 16, 32])
    init = [
        "self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)",
        "self.bn1 = nn.BatchNorm2d(width)",
        "self.layers = nn.Sequential(*[BasicBlock(width) for _ in range(num_blocks)])",
        "self.avgpool = nn.AdaptiveAvgPool2d((1, 1))",
        "self.fc = nn.Linear(width, num_classes)",
    ]
    fwd = ["x = F.relu(self.bn1(self.conv1(x)))", "x = self.layers(x)", "x = self.avgpool(x)", "x = torch.flatten(x, 1)", "return self.fc(x)"]
    conv, bn_relu, bn = _Conv2d(bias=False), _ChannelAffine(relu=True), _ChannelAffine(relu=False)
    add_relu = _Pointwise("add_relu", "tl.maximum({a} + {b}, 0.0)", arity=2, summary="Residual add followed by ReLU.")
    steps = [
        _Call(conv, ("x", "self.conv1"), "x"),
        _Call(bn_relu, ("x", "self.bn1"), "x"),
        "for block in self.layers:",
        "    identity = x",
        _Call(conv, ("x", "block.conv1"), "out", 1),
        _Call(bn_relu, ("out", "block.bn1"), "out", 1),
        _Call(conv, ("out", "block.conv2"), "out", 1),
        _Call(bn, ("out", "block.bn2"), "out", 1),
        _Call(add_relu, ("out", "identity"), "x", 1),
        "x = x.reshape(x.shape[0], x.shape[1], -1)",
        _Call(_RowReduce("mean", -1, move=False, cols=size * size), ("x",), "pooled"),
        _Call(_Matmul(bias=True), ("pooled", "self.fc.weight", "self.fc.bias"), "logits"),
        "return logits",
    ]
    if rng.random() < 0.5:
        init += [
            "for m in self.modules():",
            "    if isinstance(m, nn.Conv2d):",
            "        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')",
            "    elif isinstance(m, nn.BatchNorm2d):",
            "        nn.init.constant_(m.weight, 1)",
            "        nn.init.constant_(m.bias, 0)",
        ]
    new_init = list(init)
    new_init[2] = "self.layers = nn.ModuleList([BasicBlockParams(width) for _ in range(num_blocks)])"
    return _Module(
        5, "resnet", name, f"is a small ResNet: a 3x3 stem, {blocks} basic residual blocks of width {width}, global pooling and a linear classifier",
        "in_channels=3, width=16, num_blocks=2, num_classes=10", init, "x", fwd,
        [(rng.choice([2, 4]), cin, size, size)],
        f"{{'in_channels': {cin}, 'width': {width}, 'num_blocks': {blocks}, 'num_classes': {classes}}}",
        steps=steps, prelude=_BASIC_BLOCK, new_prelude=_BASIC_BLOCK_NEW, new_init_lines=new_init,
        ref_ops=[("extern", "convolution"), ("poi", "_native_batch_norm_legit_no_training_relu", 1, "tl.maximum({a}, 0.0)")]
        + [("extern", "convolution"), ("poi", "_native_batch_norm_legit_no_training_relu", 1, "tl.maximum({a}, 0.0)"),
           ("extern", "convolution"), ("poi", "_native_batch_norm_legit_no_training_add_relu", 2, "tl.maximum({a} + {b}, 0.0)")] * blocks
        + [("per", "mean", _REDUCE_OPS["mean"][0]), ("extern", "addmm")],
        ref_params=["self.conv1.weight", "self.bn1.weight", "self.bn1.bias", "self.fc.weight", "self.fc.bias"],
        doc=_doc(rng, "A compact ResNet for small images (CIFAR-style), built from BasicBlocks."),
    )  # fmt: skip


def _t_transformer(rng: random.Random, name: str | None) -> _Module:
    name = name or rng.choice(["TransformerEncoderLayer", "EncoderLayer", "TransformerBlock", "Block"])
    d, heads = rng.choice([(32, 4), (64, 4), (64, 8), (128, 8), (16, 2)])
    ff = d * rng.choice([2, 4])
    b, seq = rng.choice([(2, 8), (4, 4), (2, 16), (1, 32)])
    act = rng.choice(["gelu", "relu"])
    eps = rng.choice([1e-5, 1e-6])
    pre_norm = rng.random() < 0.5
    init = [
        "self.num_heads = nhead",
        "self.head_dim = d_model // nhead",
        "self.qkv = nn.Linear(d_model, 3 * d_model)",
        "self.proj = nn.Linear(d_model, d_model)",
        f"self.norm1 = nn.LayerNorm(d_model, eps={eps})",
        f"self.norm2 = nn.LayerNorm(d_model, eps={eps})",
        "self.linear1 = nn.Linear(d_model, dim_feedforward)",
        "self.linear2 = nn.Linear(dim_feedforward, d_model)",
        "self.dropout = nn.Dropout(dropout)",
    ]
    act_fn = "F.gelu" if act == "gelu" else "F.relu"
    attn_lines = [
        "B, L, D = h.shape",
        "qkv = self.qkv(h).reshape(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)",
        "q, k, v = qkv[0], qkv[1], qkv[2]",
        "attn = (q @ k.transpose(-2, -1)) * (self.head_dim ** -0.5)",
        "attn = attn.softmax(dim=-1)",
        "h = (attn @ v).transpose(1, 2).reshape(B, L, D)",
        "h = self.dropout(self.proj(h))",
    ]
    if pre_norm:
        fwd = ["h = self.norm1(x)"] + attn_lines + ["x = x + h", f"h = self.linear2(self.dropout({act_fn}(self.linear1(self.norm2(x)))))", "return x + self.dropout(h)"]
    else:
        fwd = ["h = x"] + attn_lines + ["x = self.norm1(x + h)", f"h = self.linear2(self.dropout({act_fn}(self.linear1(x))))", "return self.norm2(x + self.dropout(h))"]
    ln = _RowNorm("layernorm", cols=d, eps=eps)
    lin, lin_act = _Matmul(bias=True), _Matmul(bias=True, act=act)
    add = _Pointwise("add", "{a} + {b}", arity=2, summary="Residual addition.")
    head = ([_Call(ln, ("x", "self.norm1.weight", "self.norm1.bias"), "h")] if pre_norm else ["h = x"]) + [
        "B, L, D = h.shape",
        _Call(lin, ("h", "self.qkv.weight", "self.qkv.bias"), "qkv"),
        "qkv = qkv.reshape(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)",
        "q, k, v = qkv[0], qkv[1], qkv[2]",
    ]
    basic_attn = [
        "scores = (q @ k.transpose(-2, -1)) * (self.head_dim ** -0.5)",
        _Call(_softmax_comp(seq), ("scores",), "probs"),
        "ctx = probs @ v",
    ]
    fused_attn = [_Call(_FusedAttention(), ("q", "k", "v", "self.head_dim ** -0.5"), "ctx")]
    mid = ["ctx = ctx.transpose(1, 2).reshape(B, L, D)", _Call(lin, ("ctx", "self.proj.weight", "self.proj.bias"), "h")]
    if pre_norm:
        tail = [
            _Call(add, ("x", "h"), "x"),
            _Call(ln, ("x", "self.norm2.weight", "self.norm2.bias"), "h"),
            _Call(lin_act, ("h", "self.linear1.weight", "self.linear1.bias"), "h"),
            _Call(lin, ("h", "self.linear2.weight", "self.linear2.bias"), "h"),
            _Call(add, ("x", "h"), "out"),
            "return out",
        ]
    else:
        tail = [
            _Call(add, ("x", "h"), "x"),
            _Call(ln, ("x", "self.norm1.weight", "self.norm1.bias"), "x"),
            _Call(lin_act, ("x", "self.linear1.weight", "self.linear1.bias"), "h"),
            _Call(lin, ("h", "self.linear2.weight", "self.linear2.bias"), "h"),
            _Call(add, ("x", "h"), "x"),
            _Call(ln, ("x", "self.norm2.weight", "self.norm2.bias"), "out"),
            "return out",
        ]
    return _Module(
        5, "transformer_layer", name,
        f"is a {'pre' if pre_norm else 'post'}-norm transformer encoder layer (d_model={d}, {heads} heads, feed-forward {ff}, {act.upper()})",
        "d_model, nhead, dim_feedforward=2048, dropout=0.1", init, "x", fwd,
        [(b, seq, d)], f"{{'d_model': {d}, 'nhead': {heads}, 'dim_feedforward': {ff}}}",
        steps=head + basic_attn + mid + tail, fast_steps=head + fused_attn + mid + tail,
        ref_ops=[("norm", "layernorm"), ("extern", "addmm"), ("extern", "bmm"), ("norm", "softmax"), ("extern", "bmm"),
                 ("extern", "addmm"), ("poi", "add", 2, "{a} + {b}"), ("norm", "layernorm"), ("extern", "addmm"),
                 ("poi", act, 1, _ACTIVATIONS[act].format(acc="{a}")), ("extern", "addmm"), ("poi", "add", 2, "{a} + {b}")],
        ref_params=["self.qkv.weight", "self.qkv.bias", "self.proj.weight", "self.proj.bias", "self.norm1.weight",
                    "self.norm1.bias", "self.norm2.weight", "self.norm2.bias", "self.linear1.weight", "self.linear1.bias",
                    "self.linear2.weight", "self.linear2.bias"],
        doc=_doc(rng, "Transformer encoder layer: self-attention and a feed-forward network, each with a residual connection and LayerNorm."),
    )  # fmt: skip


_DOUBLE_CONV = '''\
class DoubleConv(nn.Module):
    """(convolution => [BN] => ReLU) * 2"""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.double_conv(x)
'''

_DOUBLE_CONV_NEW = '''\
class DoubleConvParams(nn.Module):
    """Parameters of a (conv => BN => ReLU) * 2 stage, laid out like the original DoubleConv."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
'''


def _t_unet(rng: random.Random, name: str | None) -> _Module:
    name = name or rng.choice(["UNet", "UNetSmall", "TinyUNet", "UNetLite", "SimpleUNet"])
    cin, cout = rng.choice([(3, 1), (1, 2), (4, 4), (3, 3)])
    base = rng.choice([8, 16, 32])
    size = rng.choice([8, 16, 32])
    init = [
        "self.inc = DoubleConv(n_channels, base)",
        "self.down = DoubleConv(base, base * 2)",
        "self.up = nn.ConvTranspose2d(base * 2, base, kernel_size=2, stride=2)",
        "self.dec = DoubleConv(base * 2, base)",
        "self.outc = nn.Conv2d(base, n_classes, kernel_size=1)",
    ]
    fwd = [
        "x1 = self.inc(x)",
        "x2 = self.down(F.max_pool2d(x1, 2))",
        "u = self.up(x2)",
        "x = self.dec(torch.cat([u, x1], dim=1))",
        "return self.outc(x)",
    ]
    new_init = [line.replace("DoubleConv(", "DoubleConvParams(") for line in init]
    conv, bn_relu = _Conv2d(bias=False), _ChannelAffine(relu=True)

    def stage(inp: str, mod: str, out: str) -> list[Any]:
        return [
            _Call(conv, (inp, f"{mod}.double_conv[0]"), out),
            _Call(bn_relu, (out, f"{mod}.double_conv[1]"), out),
            _Call(conv, (out, f"{mod}.double_conv[3]"), out),
            _Call(bn_relu, (out, f"{mod}.double_conv[4]"), out),
        ]

    steps = (
        stage("x", "self.inc", "x1")
        + ["# Pooling and the transposed convolution stay in PyTorch (cheap at this size).", "p = F.max_pool2d(x1, 2)"]
        + stage("p", "self.down", "x2")
        + ["u = self.up(x2)", "x = torch.cat([u, x1], dim=1)"]
        + stage("x", "self.dec", "x")
        + [_Call(_Conv2d(bias=True), ("x", "self.outc"), "out"), "return out"]
    )
    stage_ops = [("extern", "convolution"), ("poi", "_native_batch_norm_legit_no_training_relu", 1, "tl.maximum({a}, 0.0)")] * 2
    return _Module(
        5, "unet", name, f"is a two-level UNet (base width {base}) with max-pool downsampling, a transposed-convolution upsampling and a skip connection",
        "n_channels, n_classes, base=16", init, "x", fwd, [(rng.choice([1, 2]), cin, size, size)],
        f"{{'n_channels': {cin}, 'n_classes': {cout}, 'base': {base}}}",
        steps=steps, prelude=_DOUBLE_CONV, new_prelude=_DOUBLE_CONV_NEW, new_init_lines=new_init,
        ref_ops=stage_ops + [("poi", "max_pool2d_with_indices", 1, "{a}")] + stage_ops
        + [("extern", "convolution"), ("poi", "cat", 2, "tl.where({a} > 0, {a}, {b})")] + stage_ops + [("extern", "convolution")],
        ref_params=["self.inc.double_conv[0].weight", "self.down.double_conv[0].weight", "self.up.weight", "self.outc.weight"],
        doc=_doc(rng, "A small UNet for dense prediction."),
    )  # fmt: skip


#: The templates of each rubric level (index = level).
_TEMPLATES: tuple[tuple[Any, ...], ...] = (
    (_t_identity, _t_clone, _t_flatten),
    (_t_unary, _t_unary, _t_unary, _t_binary, _t_binary),
    (_t_reduce, _t_reduce, _t_reduce, _t_global_pool),
    (_t_softmax, _t_softmax, _t_layernorm, _t_rmsnorm, _t_l2normalize, _t_batchnorm_relu, _t_mlp, _t_linear_relu),
    (_t_sdpa, _t_mha, _t_conv, _t_conv, _t_conv_bn_relu),
    (_t_resnet, _t_transformer, _t_unet),
)
#: Levels of the sample, cycled so that every level appears in any 12 consecutive problems.
_LEVEL_CYCLE = (1, 3, 2, 4, 1, 0, 3, 5, 2, 1, 4, 3)
#: Level weights of the large benchmark file (most KernelBook modules are simple or moderate).
_LEVEL_WEIGHTS = (0.05, 0.27, 0.15, 0.27, 0.16, 0.10)
#: Generic class names that different repositories reuse for different modules.
_GENERIC_NAMES = ("Model", "MyModule", "Net")


# ============================================================================================
# Rendering: PyTorch source, inductor-style reference, prompt
# ============================================================================================


_EXTRA_IMPORTS = ("import numpy as np", "from typing import Optional", "import torch.utils.data", "import torch.utils.checkpoint")
_MIN_MODULE_CHARS = 520  # KernelBook modules are rarely shorter: their repositories document them


_ARGS_DOC = (
    "\n\n    Args:\n        x (torch.Tensor): the input tensor.\n\n"
    "    Returns:\n        torch.Tensor: the result, computed in the input dtype."
)


def _python_code(m: _Module, rng: random.Random) -> str:
    """The module's source file, KernelBook style (class, ``get_inputs``, ``get_init_inputs``).

    Modules shorter than :data:`_MIN_MODULE_CHARS` get a fuller docstring, as their
    repositories usually give them (sizes stay realistic for the benchmarks)."""
    body = "\n".join([*m.init_lines, *m.fwd_lines, m.prelude])
    imports = ["import torch", "import torch.nn as nn"]
    if "F." in body:
        imports.append("import torch.nn.functional as F")
    if "math." in body:
        imports.insert(0, "import math")
    if rng.random() < 0.4:  # files often import more than the module needs
        imports += sorted(rng.sample(_EXTRA_IMPORTS, rng.randint(1, 2)))
    super_line = "        super().__init__()" if rng.random() < 0.6 else f"        super({m.name}, self).__init__()"
    if m.level >= 3 and m.init_params and rng.random() < 0.6 and "Args:" not in (m.doc or ""):
        m.doc = (m.doc or f"Module that {m.desc}.") + _init_args_doc(m.init_params)
    code = _module_source(m, imports, super_line)
    if len(code) < _MIN_MODULE_CHARS:
        doc = m.doc or f"Module that {m.desc}."
        m.doc = doc if "Args:" in doc else doc + _ARGS_DOC
        code = _module_source(m, imports, super_line)
    return code


_PARAM_DOCS = {
    "in_channels": "int: number of channels of the input image",
    "out_channels": "int: number of channels produced by the convolution",
    "kernel_size": "int: size of the convolving kernel",
    "stride": "int: stride of the convolution",
    "padding": "int: zero-padding added to both sides of the input",
    "in_planes": "int: input channels",
    "out_planes": "int: output channels",
    "num_features": "int: number of channels C of an (N, C, H, W) input",
    "d_model": "int: the number of expected features in the input",
    "nhead": "int: the number of heads in the multi-head attention",
    "dim_feedforward": "int: the dimension of the feed-forward network",
    "dropout": "float: the dropout probability",
    "drop": "float: dropout probability after each linear layer",
    "embed_dim": "int: total dimension of the model",
    "num_heads": "int: number of parallel attention heads; embed_dim must be divisible by it",
    "width": "int: number of channels of every residual block",
    "num_blocks": "int: number of residual blocks",
    "num_classes": "int: number of output classes",
    "n_channels": "int: channels of the input image",
    "n_classes": "int: channels of the predicted map",
    "base": "int: channels of the first stage (doubled at each level)",
    "in_features": "int: size of each input sample",
    "hidden_features": "int: size of the hidden layer",
    "out_features": "int: size of each output sample",
    "features": "int: size of the normalised (last) dimension",
    "eps": "float: value added to the denominator for numerical stability",
    "dim": "int: the dimension to operate on",
    "temperature": "float: the softmax temperature (usually sqrt(d_k))",
    "d_k": "int: dimension of the keys",
}


def _init_args_doc(init_params: str) -> str:
    lines = ["", "", "    Args:"]
    for param in init_params.split(", "):
        name, _, default = param.partition("=")
        kind, _, text = _PARAM_DOCS.get(name, "object: a hyper-parameter").partition(": ")
        suffix = f" Default: {default}." if default else ""
        lines.append(f"        {name} ({kind}): {text[0].upper()}{text[1:]}.{suffix}")
    return "\n".join(lines)


def _module_source(m: _Module, imports: list[str], super_line: str) -> str:
    parts = ["\n".join(imports), ""]
    if m.prelude:
        parts += ["", m.prelude]
    parts += ["", f"class {m.name}(nn.Module):"]
    if m.doc:
        parts += [f'    """{m.doc}\n    """' if "\n" in m.doc else f'    """{m.doc}"""', ""]
    sep = ", " if m.init_params else ""
    parts += [f"    def __init__(self{sep}{m.init_params}):", super_line]
    parts += [f"        {line}" for line in m.init_lines]
    parts += ["", f"    def forward(self, {m.fwd_params}):"]
    parts += [f"        {line}" for line in m.fwd_lines]
    inputs = ", ".join(f"torch.rand({_dims_text(s)})" for s in m.inputs)
    parts += ["", "", "def get_inputs():", f"    return [{inputs}]", "", "", "def get_init_inputs():"]
    parts += [f"    return [[], {m.init_kwargs}]", ""]
    return "\n".join(parts)


_INDUCTOR_HEADER = """\
import torch
from torch._inductor.select_algorithm import extern_kernels
import triton
import triton.language as tl
from torch._inductor.runtime.triton_heuristics import grid
from torch._C import _cuda_getCurrentRawStream as get_raw_stream
from torch._inductor.runtime import triton_helpers
from torch._inductor.runtime.triton_helpers import libdevice, math as tl_math
import torch.nn as nn
assert_size_stride = torch._C._dynamo.guards.assert_size_stride
empty_strided_cuda = torch._C._dynamo.guards._empty_strided_cuda
reinterpret_tensor = torch._C._dynamo.guards._reinterpret_tensor
"""

_INDUCTOR_NORM_BODIES = {
    "softmax": ["tmp1 = tl.broadcast_to(tmp0, [XBLOCK, RBLOCK])", "tmp3 = tl.where(xmask, tmp1, float('-inf'))",
                "tmp4 = triton_helpers.max2(tmp3, 1)[:, None]", "tmp5 = tmp0 - tmp4", "tmp6 = tl_math.exp(tmp5)",
                "tmp7 = tl.broadcast_to(tmp6, [XBLOCK, RBLOCK])", "tmp9 = tl.where(xmask, tmp7, 0)",
                "tmp10 = tl.sum(tmp9, 1)[:, None]", "tmp11 = tmp6 / tmp10"],
    "log_softmax": ["tmp1 = tl.broadcast_to(tmp0, [XBLOCK, RBLOCK])", "tmp3 = tl.where(xmask, tmp1, float('-inf'))",
                    "tmp4 = triton_helpers.max2(tmp3, 1)[:, None]", "tmp5 = tmp0 - tmp4", "tmp6 = tl_math.exp(tmp5)",
                    "tmp7 = tl.broadcast_to(tmp6, [XBLOCK, RBLOCK])", "tmp9 = tl.where(xmask, tmp7, 0)",
                    "tmp10 = tl.sum(tmp9, 1)[:, None]", "tmp11 = tmp5 - tl_math.log(tmp10)"],
    "layernorm": ["tmp1 = tl.broadcast_to(tmp0, [XBLOCK, RBLOCK])", "tmp3 = tl.where(xmask, tmp1, 0)",
                  "tmp4 = tl.sum(tmp3, 1)[:, None]", "tmp5 = tmp4 / rnumel", "tmp6 = tmp0 - tmp5", "tmp7 = tmp6 * tmp6",
                  "tmp8 = tl.where(xmask, tl.broadcast_to(tmp7, [XBLOCK, RBLOCK]), 0)", "tmp9 = tl.sum(tmp8, 1)[:, None] / rnumel",
                  "tmp10 = libdevice.rsqrt(tmp9 + 1e-05)", "tmp11 = tmp6 * tmp10"],
    "rmsnorm": ["tmp1 = tmp0 * tmp0", "tmp2 = tl.broadcast_to(tmp1, [XBLOCK, RBLOCK])", "tmp4 = tl.where(xmask, tmp2, 0)",
                "tmp5 = tl.sum(tmp4, 1)[:, None] / rnumel", "tmp6 = libdevice.rsqrt(tmp5 + 1e-06)", "tmp11 = tmp0 * tmp6"],
    "l2normalize": ["tmp1 = tmp0 * tmp0", "tmp2 = tl.broadcast_to(tmp1, [XBLOCK, RBLOCK])", "tmp4 = tl.where(xmask, tmp2, 0)",
                    "tmp5 = libdevice.sqrt(tl.sum(tmp4, 1)[:, None])", "tmp6 = triton_helpers.maximum(tmp5, 1e-12)",
                    "tmp11 = tmp0 / tmp6"],
}  # fmt: skip


def _strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    out, acc = [], 1
    for dim in reversed(shape):
        out.append(acc)
        acc *= dim
    return tuple(reversed(out))


_INDUCTOR_REDUCE_BODIES = {
    "sum": ("0", ["tmp4 = tl.sum(tmp3, 1)[:, None]"], "tmp4"),
    "mean": ("0", ["tmp4 = tl.sum(tmp3, 1)[:, None]", "tmp5 = {rnumel}.0", "tmp6 = tmp4 / tmp5"], "tmp6"),
    "max": ("float('-inf')", ["tmp4 = triton_helpers.max2(tmp3, 1)[:, None]"], "tmp4"),
    "min": ("float('inf')", ["tmp4 = triton_helpers.min2(tmp3, 1)[:, None]"], "tmp4"),
    "l2norm": ("0", ["tmp4 = tmp3 * tmp3", "tmp5 = tl.sum(tmp4, 1)[:, None]", "tmp6 = libdevice.sqrt(tmp5)"], "tmp6"),
}


def _inductor_code(m: _Module) -> str:
    """A reference translation in the style torch inductor emits (as KernelBook's ``triton_code``).

    It follows inductor's layout (numbered fused kernels, ``call(args)`` with extern kernels for
    matmuls and convolutions, and a ``{name}New`` module) without claiming exact semantics: it is
    reference text for prompts and judges, never executed.
    """
    shape = m.inputs[0]
    numel = _numel(shape)
    rnumel = shape[-1]
    xnumel = numel // rnumel
    n_in = len(m.inputs)
    inputs = [f"arg{i}_1" for i in range(n_in)]
    params = [f"primals_{i + 1}" for i in range(len(m.ref_params))]
    operands = params or inputs
    kernels: dict[tuple, str] = {}  # identical kernels are emitted once and reused, like inductor
    sources: list[str] = []
    calls: list[str] = []
    current = inputs[0]
    used = 0

    def operand() -> str:
        nonlocal used
        used += 1
        return operands[(used - 1) % len(operands)]

    for buf, op in enumerate(m.ref_ops):
        kind = op[0]
        if kind == "extern":
            if op[1] == "convolution":
                calls.append(
                    f"buf{buf} = extern_kernels.convolution({current}, {operand()}, stride=(1, 1), padding=(1, 1), "
                    "dilation=(1, 1), transposed=False, output_padding=(0, 0), groups=1, bias=None)"
                )
                calls.append(f"assert_size_stride(buf{buf}, {tuple(shape)}, {_strides(shape)})")
            else:
                calls.append(f"buf{buf} = empty_strided_cuda(({xnumel}, {rnumel}), ({rnumel}, 1), torch.float32)")
                a, b = f"reinterpret_tensor({current}, ({xnumel}, {rnumel}), ({rnumel}, 1), 0)", operand()
                if op[1] == "addmm":
                    calls.append(
                        f"extern_kernels.addmm({operand()}, {a}, reinterpret_tensor({b}, ({rnumel}, {rnumel}), "
                        f"(1, {rnumel}), 0), alpha=1, beta=1, out=buf{buf})"
                    )
                else:
                    calls.append(f"extern_kernels.bmm({a}, {b}, out=buf{buf})")
            current = f"buf{buf}"
            continue
        signature = tuple(op)
        if signature not in kernels:
            idx = len(kernels)
            if kind == "poi":
                _, name, nin, expr = op
                kname = f"triton_poi_fused_{name}_{idx}"
                ins = ", ".join(f"in_ptr{i}" for i in range(nin))
                lines = [
                    "@triton.jit",
                    f"def {kname}({ins}, out_ptr0, xnumel, XBLOCK: tl.constexpr):",
                    f"    xnumel = {numel}",
                    "    xoffset = tl.program_id(0) * XBLOCK",
                    "    xindex = xoffset + tl.arange(0, XBLOCK)[:]",
                    "    xmask = xindex < xnumel",
                    "    x0 = xindex",
                    *[f"    tmp{i} = tl.load(in_ptr{i} + x0, xmask)" for i in range(nin)],
                    f"    tmp{nin} = {expr.format(a='tmp0', b='tmp1')}",
                    f"    tl.store(out_ptr0 + x0, tmp{nin}, xmask)",
                ]
            else:
                if kind == "per":  # a reduction over the last dimension
                    fill, body, result = _INDUCTOR_REDUCE_BODIES[op[1]]
                    body = ["tmp1 = tl.broadcast_to(tmp0, [XBLOCK, RBLOCK])", f"tmp3 = tl.where(xmask, tmp1, {fill})",
                            *(line.format(rnumel=rnumel) for line in body)]  # fmt: skip
                    kname, store = f"triton_per_fused_{op[1]}_{idx}", "x0"
                else:  # "norm": a persistent normalisation of each row
                    body, result = _INDUCTOR_NORM_BODIES[op[1]], "tmp11"
                    kname, store = f"triton_per_fused__{op[1]}_{idx}", f"r1 + {rnumel} * x0"
                lines = [
                    "@triton.jit",
                    f"def {kname}(in_ptr0, out_ptr0, xnumel, rnumel, XBLOCK: tl.constexpr):",
                    f"    xnumel = {xnumel}",
                    f"    RBLOCK: tl.constexpr = {_next_pow2(rnumel)}",
                    "    xoffset = tl.program_id(0) * XBLOCK",
                    "    xindex = xoffset + tl.arange(0, XBLOCK)[:, None]",
                    "    xmask = xindex < xnumel",
                    "    rindex = tl.arange(0, RBLOCK)[None, :]",
                    "    r1 = rindex",
                    "    x0 = xindex",
                    f"    tmp0 = tl.load(in_ptr0 + (r1 + {rnumel} * x0), xmask, other=0.0)",
                    *[f"    {line}" for line in body],
                    f"    tl.store(out_ptr0 + ({store}), {result}, xmask)",
                ]
            kernels[signature] = kname
            sources.append("\n".join(lines))
        kname = kernels[signature]
        if kind == "poi":
            launch_args = ", ".join([current] + [operand() for _ in range(op[2] - 1)])
            block = min(256, _next_pow2(numel))
            launch = f"{kname}[grid({numel})]({launch_args}, buf{buf}, {numel}, XBLOCK={block}, num_warps=4, num_stages=1)"
        else:
            block = min(128, _next_pow2(xnumel))
            launch = f"{kname}[grid({xnumel})]({current}, buf{buf}, {xnumel}, {rnumel}, XBLOCK={block}, num_warps=2, num_stages=1)"
        calls += [f"buf{buf} = empty_strided_cuda({tuple(shape)}, {_strides(shape)}, torch.float32)", "get_raw_stream(0)", launch]
        current = f"buf{buf}"
    unpack = ", ".join(inputs + params)
    call_lines = [
        "def call(args):",
        f"    {unpack}, = args",
        "    args.clear()",
        *[f"    assert_size_stride({a}, {tuple(s)}, {_strides(s)})" for a, s in zip(inputs, m.inputs, strict=True)],
        "    with torch.cuda._DeviceGuard(0):",
        "        torch.cuda.set_device(0)",
        *[f"        {line}" for line in calls],
        *[f"        del {a}" for a in inputs],
        f"    return {current},",
    ]
    sep = ", " if m.init_params else ""
    cls = [
        f"class {m.name}New(nn.Module):",
        "",
        f"    def __init__(self{sep}{m.init_params}):",
        "        super().__init__()",
        *[f"        {line}" for line in m.init_lines],
        "",
        f"    def forward(self, {', '.join(f'input_{i}' for i in range(n_in))}):",
        *[f"        {p} = {attr}" for p, attr in zip(params, m.ref_params, strict=True)],
        *[f"        {a} = input_{i}" for i, a in enumerate(inputs)],
        f"        output = call([{unpack}])",
        "        return output[0]",
    ]
    # KernelBook's translations keep the original helper classes (they are part of the module file).
    prelude = [m.prelude.rstrip("\n")] if m.prelude else []
    blocks = [_INDUCTOR_HEADER.rstrip("\n"), *sources, "\n".join(call_lines), *prelude, "\n".join(cls)]
    return "\n\n\n".join(blocks) + "\n"


_SYSTEM_PROMPT = (
    "You are an expert in GPU programming with Triton and PyTorch. You convert PyTorch modules into "
    "correct, fast Triton kernels. Think the problem through, then give your final answer."
)

_USER_PROMPT = """\
Convert the following PyTorch code to an optimized Triton kernel.

Requirements:
- Write a class named `{name}New` that inherits from `torch.nn.Module` and implements the `forward` method using Triton kernels.
- `{name}New` must take the same constructor arguments as `{name}` and return the same outputs for the inputs of `get_inputs()`.
- The code will be executed with NO pre-imported modules: import everything you use (`torch`, `triton`, `triton.language as tl`, ...).
- Do not call the original PyTorch operations for the main computation; write Triton kernels for it.

Reference implementation:

```python
{code}
```

Put your complete implementation inside <answer>...</answer> tags as a single ```python code block."""


def _prompt(m: _Module) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": _SYSTEM_PROMPT},
        {"role": "user", "content": _USER_PROMPT.format(name=m.name, code=m.python_code)},
    ]


def _build_problem(rng: random.Random, level: int, name: str | None = None) -> _Module:
    template = rng.choice(_TEMPLATES[level])
    m = template(rng, name)
    m.python_code = _python_code(m, rng)
    m.triton_code = _inductor_code(m)
    return m


# ============================================================================================
# Solutions, reasoning and the completion message
# ============================================================================================


def _components(steps: Iterable[Any]) -> list[_Component]:
    seen: list[_Component] = []
    for step in steps:
        if isinstance(step, _Call) and step.comp not in seen:
            seen.append(step.comp)
    keys = [c.key for c in seen]
    if len(set(keys)) != len(keys):
        raise ValueError(f"two different components share a kernel name in one solution: {keys}")
    return seen


def _kernel_name(comp: _Component, style: Style, idx: int) -> str:
    return f"{comp.key}_kernel" if style.descriptive else f"k{idx}"


def _helper_name(comp: _Component, style: Style, idx: int) -> str:
    return f"triton_{comp.key}" if style.descriptive else f"f{idx}"


def _indent(text: str, prefix: str) -> list[str]:
    return [(prefix + line) if line else "" for line in text.split("\n")]


@lru_cache(maxsize=16384)
def _launch_source(comp: _Component, style: Style, kname: str, args: tuple[str, ...], out: str) -> str:
    return comp.launch(style, kname, args, out)


@lru_cache(maxsize=4096)
def _component_source(comp: _Component, style: Style, idx: int) -> tuple[str, str]:
    """The kernel source and (helper style) the launcher function of one component."""
    kname = _kernel_name(comp, style, idx)
    kernel = comp.kernel(style, kname)
    if not style.helpers:
        return kernel, ""
    out = "output" if style.descriptive else "o"
    lines = [f"def {_helper_name(comp, style, idx)}({', '.join(comp.params)}):"]
    if style.comments:
        lines.append(f'    """{comp.summary} Launches ``{kname}``."""')
    if style.tier == "good":
        lines += [f"    {p} = {p}.contiguous()" for p in comp.tensor_params]
    lines += _indent(_launch_source(comp, style, kname, comp.params, out), "    ")
    lines.append(f"    return {out}")
    return kernel, "\n".join(lines)


def _solution(m: _Module, style: Style) -> str:
    steps = m.fast_steps if (m.fast_steps is not None and style.tier == "good") else m.steps
    comps = _components(steps)
    index = {c: i for i, c in enumerate(comps)}
    sources = [_component_source(c, style, i) for i, c in enumerate(comps)]
    fwd: list[str] = []
    for step in steps:
        if isinstance(step, str):
            if step.lstrip().startswith("#") and not style.comments:
                continue
            fwd.append(step)
            continue
        pad = "    " * step.indent
        i = index[step.comp]
        if style.helpers:
            fwd.append(f"{pad}{step.out} = {_helper_name(step.comp, style, i)}({', '.join(step.args)})")
        else:
            if style.comments:
                fwd.append(f"{pad}# {step.comp.summary}")
            # The launch allocates its output first: write to a fresh name when the output
            # variable is also an input, so the input is not lost before the kernel reads it.
            out = step.out if step.out not in step.args else ("result" if style.descriptive else "tmp")
            fwd += _indent(_launch_source(step.comp, style, _kernel_name(step.comp, style, i), step.args, out), pad)
            if out != step.out:
                fwd.append(f"{pad}{step.out} = {out}")
    init_lines = m.new_init_lines if m.new_init_lines is not None else m.init_lines
    sep = ", " if m.init_params else ""
    cls = [f"class {m.name}New(nn.Module):"]
    if style.comments:
        cls += [f'    """Triton implementation of ``{m.name}``, which {m.desc}."""', ""]
    cls += [f"    def __init__(self{sep}{m.init_params}):", "        super().__init__()"]
    cls += [f"        {line}" for line in init_lines]
    cls += ["", f"    def forward(self, {m.fwd_params}):"]
    cls += [f"        {line}" if line else "" for line in fwd]
    text_for_imports = "\n".join([*cls, m.new_prelude, *(s for pair in sources for s in pair)])
    imports = ["import torch", "import torch.nn as nn"]
    if "F." in text_for_imports:
        imports.append("import torch.nn.functional as F")
    imports += ["import triton", "import triton.language as tl"]
    if "math." in text_for_imports:
        imports.insert(0, "import math")
    blocks = ["\n".join(imports)]
    blocks += [kernel for kernel, _ in sources]
    blocks += [helper for _, helper in sources if helper]
    if m.new_prelude:
        blocks.append(m.new_prelude.rstrip("\n"))
    blocks.append("\n".join(cls))
    return "\n\n\n".join(blocks) + "\n"


def _break_syntax(code: str, rng: random.Random) -> str:
    """Introduce one realistic Python syntax error (a dropped colon or parenthesis)."""
    lines = code.split("\n")
    strategies = ["forward_colon", "store_paren", "jit_colon"]
    rng.shuffle(strategies)
    for strategy in strategies:
        for i, line in enumerate(lines):
            stripped = line.strip()
            if strategy == "forward_colon" and stripped.startswith("def forward(") and stripped.endswith(":"):
                lines[i] = line[: line.rindex(":")]
                return "\n".join(lines)
            if strategy == "store_paren" and stripped.startswith("tl.store(") and stripped.endswith(")"):
                lines[i] = line[:-1]
                return "\n".join(lines)
            if strategy == "jit_colon" and i > 0 and lines[i - 1] == "@triton.jit" and stripped.endswith(":"):
                lines[i] = line[: line.rindex(":")]
                return "\n".join(lines)
    raise ValueError("no place to introduce a syntax error")  # every solution has a forward()


_EXPLAIN_OPENERS = (
    "I'll convert `{name}` to Triton.",
    "Here is a Triton implementation of `{name}`.",
    "Looking at the reference, `{name}` {desc}.",
    "The task is to reimplement `{name}` with Triton kernels.",
    "Below is `{name}New`.",
)


def _explanation(m: _Module, comps: list[_Component], style: Style, rng: random.Random) -> str:
    parts = [rng.choice(_EXPLAIN_OPENERS).format(name=m.name, desc=m.desc)]
    parts.append(f"The module {m.desc}.")
    if len(comps) == 1:
        parts.append(f"I use a single kernel: {comps[0].summary[0].lower()}{comps[0].summary[1:]}")
    else:
        listed = "; ".join(c.summary.rstrip(".").lower() for c in comps)
        parts.append(f"The implementation uses {len(comps)} kernels ({listed}).")
    if style.masks and rng.random() < 0.6:
        parts.append("All loads and stores are masked, so any input size works.")
    if style.tier == "good" and rng.random() < 0.7:
        parts.append("Intermediate results are kept in registers and accumulated in fp32 for accuracy.")
    if rng.random() < 0.4:
        parts.append("Parameters are stored exactly as in the original module, so its state_dict loads unchanged.")
    return " ".join(parts)


_THOUGHTS_OPEN = (
    "Let me analyze the PyTorch code first. The module `{name}` {desc}.",
    "Okay, so I need to write `{name}New`, a Triton version of `{name}`. Looking at forward(), it {desc}.",
    "We need to convert `{name}` to Triton. The forward pass {desc}.",
    "Let me understand what `{name}` does: it {desc}.",
)
_THOUGHTS_SHAPE = (
    "The test input from get_inputs() has shape {shape}, i.e. {numel} elements.",
    "get_inputs() returns tensors of shape {shape}, so the problem is tiny ({numel} elements) and launch overhead will dominate the runtime.",
    "Inputs are {shape}; that is {numel} elements, which fits in a handful of blocks.",
)
_THOUGHTS_PLAN = (
    "For this part I'll write a kernel that does the following: {summary}",
    "Plan: {summary} That becomes one @triton.jit function.",
    "Next piece: {summary} I can write that as a separate kernel and launch it from forward().",
)
_THOUGHTS_DETAIL = (
    "Each program instance will handle BLOCK_SIZE elements; 1024 is a reasonable default for elementwise work.",
    "I need to mask the loads and stores because the number of elements is not necessarily a multiple of the block size.",
    "Accumulating in float32 keeps the numerics close to PyTorch's.",
    "After .contiguous() the tensor can be indexed as a flat array, so the offsets are just pid * BLOCK_SIZE + arange.",
    "Wait, I should double check the broadcasting here. The weight has shape [n_cols], so loading it with the column offsets is right.",
    "Actually, simpler: compute the grid with triton.cdiv instead of doing the ceiling division by hand.",
    "For a reduction along a dimension that is not the last one, the easiest approach is to move that dimension to the end with movedim and make it contiguous.",
    "The parameters must stay as nn.Parameter / submodule attributes so that the state dict matches the original module.",
    "tl.dot needs every block dimension to be at least 16, so the matmul tiles are 32x32x32.",
    "Is this numerically stable? For softmax I must subtract the row maximum before exponentiating.",
    "Hmm, what about the dtype of the output? torch.empty_like keeps the input dtype, which matches the reference.",
    "Let me also think about the number of warps. For such small blocks the default of 4 is fine.",
    "One program per row is enough here because a whole row fits in a single block.",
    "I could autotune the block size, but with inputs this small it will not matter much.",
    "Batch norm in inference mode is just a per-channel scale and shift, so it can be folded into one multiply-add.",
    "The convolution is small enough that a direct loop over input channels and the kernel window is acceptable.",
    "The index math: for an NCHW tensor the channel of flat index i is (i // (H * W)) % C.",
    "What about the masked lanes in the reduction? They must load a neutral value: 0 for sums, -inf for max.",
)
_THOUGHTS_CHECK = (
    "Let me trace through a small example to verify the indexing: row r, column c is at offset r * n_cols + c in a contiguous layout. Correct.",
    "Double-checking the output shape against the reference: it matches.",
    "I think this is correct. Let me also make sure every import is there, since nothing is pre-imported.",
    "Wait, does the reference keep the reduced dimension? I need to match that exactly.",
    "Let me re-read the requirements: the class must be named `{name}New` and take the same constructor arguments. Yes.",
    "Okay, I'm fairly confident in this. Let me write the final answer.",
)


def _reasoning(m: _Module, comps: list[_Component], solution: str, rng: random.Random) -> str:
    shape = _dims_text(m.inputs[0])
    values = {"name": m.name, "desc": m.desc, "shape": shape, "numel": _numel(m.inputs[0])}
    paragraphs = [rng.choice(_THOUGHTS_OPEN).format(**values), rng.choice(_THOUGHTS_SHAPE).format(**values)]
    for comp in comps:
        paragraphs.append(rng.choice(_THOUGHTS_PLAN).format(summary=comp.summary))
    target = rng.randint(1000, 3500)
    details = list(_THOUGHTS_DETAIL)
    rng.shuffle(details)
    text_len = sum(len(p) for p in paragraphs)
    for sentence in details:
        if text_len >= target:
            break
        paragraphs.append(sentence)
        text_len += len(sentence)
    if rng.random() < 0.35:
        # Models often draft the first kernel in their reasoning before the final answer.
        start = solution.find("@triton.jit")
        end = solution.find("\n\n\n", start)
        if start >= 0:
            paragraphs.append("Let me draft the kernel:\n\n" + solution[start : end if end > 0 else None])
    paragraphs.append(rng.choice(_THOUGHTS_CHECK).format(**values))
    return "\n\n".join(paragraphs)


def _content(explanation: str, solution: str, with_tags: bool = True) -> str:
    block = f"```python\n{solution}```"
    if with_tags:
        return f"{explanation}\n\n<answer>\n{block}\n</answer>"
    return f"{explanation}\n\n{block}"


# ============================================================================================
# Rollout rows
# ============================================================================================


def _draw_reward(rng: random.Random) -> tuple[float, float]:
    """(reward, speedup_reward): 31% failures, 27% correct but slow, 42% above the threshold."""
    u = rng.random()
    if u < 0.31:
        return 0.0, 0.0
    if u < 0.58:
        speedup = 0.7 * rng.random()  # [0, 0.7)
        return 0.5 + 0.5 * speedup, speedup
    while True:
        speedup = 0.7 + 0.3 * (1.0 - rng.random())  # (0.7, 1.0]
        reward = 0.5 + 0.5 * speedup
        if reward > REWARD_THRESHOLD:
            return reward, speedup


def _draw_tier(rng: random.Random) -> str:
    u, acc = rng.random(), 0.0
    for tier, weight in _TIER_WEIGHTS:
        acc += weight
        if u < acc:
            return tier
    return _TIER_WEIGHTS[-1][0]


def _rollout(
    m: _Module,
    example_id: int,
    rng: random.Random,
    prompt: list[dict[str, str]],
    force: str | None,
    solutions: dict[str, str],
) -> dict:
    """One rollout row. ``force``: None, "success" (reward > 0.85) or "threshold" (exactly 0.85).
    ``solutions`` caches this problem's solution per style tier (rollouts of a problem share it)."""
    style = STYLES[_draw_tier(rng)]
    if style.tier not in solutions:
        solutions[style.tier] = _solution(m, style)
    solution = solutions[style.tier]
    broken = rng.random() < _SYNTAX_ERROR_RATE
    if broken:
        solution = _break_syntax(solution, rng)
    steps = m.fast_steps if (m.fast_steps is not None and style.tier == "good") else m.steps
    comps = _components(steps)
    content = _content(_explanation(m, comps, style, rng), solution)
    reasoning = _reasoning(m, comps, solution, rng)
    reward, speedup = _draw_reward(rng)
    if force == "success" and reward <= REWARD_THRESHOLD:
        speedup = 0.8 + 0.2 * rng.random()
        reward = 0.5 + 0.5 * speedup
    elif force == "threshold":
        reward, speedup = REWARD_THRESHOLD, 0.7
    generation_ms = round(8.0 * (len(content) + len(reasoning)) + rng.uniform(2_000.0, 60_000.0), 3)
    scoring_ms = round(rng.uniform(1_500.0, 45_000.0) if reward > 0 else rng.uniform(300.0, 9_000.0), 3)
    return {
        "example_id": example_id,
        "prompt": prompt,
        "completion": [{"role": "assistant", "content": content, "reasoning": reasoning}],
        "task": "default",
        "reward": reward,
        "generation_ms": generation_ms,
        "scoring_ms": scoring_ms,
        "total_ms": round(generation_ms + scoring_ms, 3),
        "info": {"module_name": m.name, "python_code": m.python_code, "triton_code": m.triton_code},
        "answer": "",
        "speedup_reward": speedup,
        "num_turns": 1,
        "oai_tools": None,
    }


def _make_bad(row: dict, kind: str, rng: random.Random, high_reward: bool) -> None:
    """Turn a good row into a bad row of ``kind`` in place."""
    if kind == "reward_null":
        row["reward"] = None
        return
    if kind == "reward_nan":
        row["reward"] = math.nan
        return
    if high_reward and not (row["reward"] > REWARD_THRESHOLD):
        row["speedup_reward"] = 0.8 + 0.2 * rng.random()
        row["reward"] = 0.5 + 0.5 * row["speedup_reward"]
    message = row["completion"][0]
    if kind == "empty_completion":
        row["completion"] = []
    elif kind == "empty_content":
        row["completion"] = [{**message, "content": ""}]  # the model ran out of tokens while reasoning
    elif kind == "missing_answer":
        content = message["content"]
        start, end = content.index("<answer>\n"), content.index("\n</answer>")
        row["completion"] = [{**message, "content": content[:start] + content[start + 9 : end]}]
    elif kind == "empty_python_code":
        row["info"] = {**row["info"], "python_code": ""}
    elif kind == "empty_module_name":
        row["info"] = {**row["info"], "module_name": ""}
    else:
        raise ValueError(f"unknown bad row kind {kind!r}")


def _sample_problems(n_problems: int, rng: random.Random, plant_duplicates: bool = True) -> list[_Module]:
    """The sample's problems: levels cycled, generic names on a fixed pattern, no accidental
    duplicate code and, with ``plant_duplicates`` and from 30 problems on, two deliberate
    duplicates (the code of an earlier problem again, under its own example_id)."""
    problems: list[_Module] = []
    seen: set[str] = set()
    duplicate_of: dict[int, int] = {}
    if plant_duplicates and n_problems >= 30:
        duplicate_of = {n_problems - 2: n_problems // 3, n_problems - 5: n_problems // 2}
    for i in range(n_problems):
        if i in duplicate_of:
            problems.append(problems[duplicate_of[i]])
            continue
        level = _LEVEL_CYCLE[i % len(_LEVEL_CYCLE)]
        name = _GENERIC_NAMES[(i // 8) % len(_GENERIC_NAMES)] if i % 8 == 5 else None
        for _attempt in range(50):
            m = _build_problem(rng, level, name)
            if m.python_code not in seen:
                break
        else:  # pragma: no cover - the templates have far more variants than any sample needs
            raise RuntimeError(f"could not build a new distinct problem at level {level}")
        seen.add(m.python_code)
        problems.append(m)
    return problems


def eval_rows(n_problems: int, rollouts_per_problem: int = 3, seed: int = 0, bad_rows: bool = True) -> list[dict]:
    """Rollout rows in the source schema: ``n_problems`` problems x ``rollouts_per_problem``.

    Deterministic in its arguments. ``example_id`` is the problem's index; rows are ordered by it.
    Problems cycle through every rubric level; every 8th problem (index 5, 13, ...) gets a generic
    class name (``Model``, ``MyModule``, ``Net``) so different problems share a ``module_name``,
    and its first rollout scores above the threshold. The first rollout of every problem with
    index 2 mod 12 scores exactly 0.85. From 30 problems on, two problems repeat the code of an
    earlier one under their own ``example_id``. With ``bad_rows``, ``max(1, rows // 70)`` rows of
    each kind in :data:`BAD_ROW_KINDS` are planted (all but one of each kind, null/NaN aside,
    with reward > 0.85 so a reward filter alone does not remove them).
    """
    if n_problems < 1 or rollouts_per_problem < 1:
        raise ValueError("n_problems and rollouts_per_problem must be at least 1")
    rng = random.Random(f"kernelbook-evals:{seed}")
    problems = _sample_problems(n_problems, rng)
    rows: list[dict] = []
    forced: set[int] = set()
    for example_id, m in enumerate(problems):
        prompt = _prompt(m)
        solutions: dict[str, str] = {}
        for r in range(rollouts_per_problem):
            force = None
            if r == 0 and example_id % 8 == 5:
                force = "success"
            elif r == 0 and example_id % 12 == 2:
                force = "threshold"
            if force:
                forced.add(len(rows))
            rows.append(_rollout(m, example_id, rng, prompt, force, solutions))
    if bad_rows:
        per_kind = max(1, len(rows) // 70)
        candidates = [i for i in range(len(rows)) if i not in forced]
        needed = per_kind * len(BAD_ROW_KINDS)
        if len(candidates) < needed:
            raise ValueError(f"{len(rows)} rows are too few to plant {needed} bad rows; use more problems")
        bad_rng = random.Random(f"kernelbook-evals-bad:{seed}")
        chosen = bad_rng.sample(candidates, needed)
        for k, kind in enumerate(BAD_ROW_KINDS):
            for j, row_index in enumerate(sorted(chosen[k * per_kind : (k + 1) * per_kind])):
                _make_bad(rows[row_index], kind, bad_rng, high_reward=j < max(1, per_kind - 1))
    return rows


def _write_table(table: pa.Table, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=max(1, table.num_rows), **_PARQUET_OPTIONS)


def write_evals(
    path: str | Path, n_problems: int, rollouts_per_problem: int = 3, seed: int = 0, bad_rows: bool = True
) -> Path:
    """Write :func:`eval_rows` to ``path`` as parquet with exactly ``SOURCE_ARROW_SCHEMA``."""
    rows = eval_rows(n_problems, rollouts_per_problem, seed, bad_rows)
    _write_table(pa.Table.from_pylist(rows, schema=SOURCE_ARROW_SCHEMA), path)
    return Path(path)


def _iter_large_rows(n_rows: int, seed: int, bad_rows: bool) -> Iterator[dict]:
    rng = random.Random(f"kernelbook-evals-large:{seed}")
    bad_rng = random.Random(f"kernelbook-evals-large-bad:{seed}")
    levels = range(len(LEVELS))
    produced = 0
    example_id = 0
    while produced < n_rows:
        level = rng.choices(levels, weights=_LEVEL_WEIGHTS)[0]
        name = rng.choice(_GENERIC_NAMES) if rng.random() < 0.04 else None
        m = _build_problem(rng, level, name)
        prompt = _prompt(m)
        rollouts = min(rng.choice((2, 3, 3, 3, 4)), n_rows - produced)
        solutions: dict[str, str] = {}
        for _ in range(rollouts):
            row = _rollout(m, example_id, rng, prompt, None, solutions)
            if bad_rows and bad_rng.random() < 0.004:  # ~0.4% bad rows, like a real eval dump
                _make_bad(row, bad_rng.choice(BAD_ROW_KINDS), bad_rng, high_reward=bad_rng.random() < 0.5)
            yield row
            produced += 1
        example_id += 1


def write_evals_large(path: str | Path, n_rows: int, seed: int = 0, bad_rows: bool = True) -> Path:
    """Stream ``n_rows`` realistic rollout rows to ``path`` in row groups of 10k rows.

    For benchmarks (181,620 rows = 10x the real dataset): problems are drawn with realistic level
    weights, shared by 2-4 rollouts (3 on average); about 44% of rows have reward > 0.85 and about
    0.4% are bad rows of a random kind. Memory holds one row group at a time.
    """
    if n_rows < 1:
        raise ValueError("n_rows must be at least 1")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {**_PARQUET_OPTIONS, "compression_level": _LARGE_COMPRESSION_LEVEL}
    with pq.ParquetWriter(path, SOURCE_ARROW_SCHEMA, **options) as writer:
        batch: list[dict] = []
        for row in _iter_large_rows(n_rows, seed, bad_rows):
            batch.append(row)
            if len(batch) == _LARGE_BATCH_ROWS:
                writer.write_table(pa.Table.from_pylist(batch, schema=SOURCE_ARROW_SCHEMA), row_group_size=_LARGE_BATCH_ROWS)
                batch = []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=SOURCE_ARROW_SCHEMA), row_group_size=_LARGE_BATCH_ROWS)
    return path


# ============================================================================================
# KernelBook rows (prompt-generation input)
# ============================================================================================

_GH_USERS = ("pytorch", "facebookresearch", "huggingface", "lucidrains", "rwightman", "open-mmlab", "ultralytics",
             "kuangliu", "milesial", "jadore801120", "harvardnlp", "karpathy", "NVIDIA", "google-research", "ZhangLab")  # fmt: skip
_GH_REPOS = ("vision", "pytorch-image-models", "transformers", "mmdetection", "pytorch-cifar", "Pytorch-UNet",
             "attention-is-all-you-need-pytorch", "annotated-transformer", "minGPT", "DeepLearningExamples",
             "x-transformers", "yolov5", "fairseq", "detectron2", "nn-experiments")  # fmt: skip
_LICENSES = (["MIT License"], ["Apache License 2.0"], ['BSD 3-Clause "New" or "Revised" License'],
             ["MIT License", "Apache License 2.0"], [], ["GNU General Public License v3.0"])  # fmt: skip


def kernelbook_rows(n_rows: int = 50, seed: int = 0, duplicates: int = 4, empty_code: int = 2) -> list[dict]:
    """Rows in the ``GPUMODE/KernelBook`` schema (:data:`KERNELBOOK_ARROW_SCHEMA`).

    ``duplicates`` rows repeat the exact ``python_code`` of an earlier row (the same module found
    in a second repository) and ``empty_code`` rows have ``python_code == ""``. ``uuid`` is the
    row index; ``entry_point`` is the module name.
    """
    n_unique = n_rows - duplicates - empty_code
    if n_unique < 1 or duplicates < 0 or empty_code < 0:
        raise ValueError("n_rows must exceed duplicates + empty_code, which must not be negative")
    rng = random.Random(f"kernelbook-rows:{seed}")
    problems = _sample_problems(n_unique, rng, plant_duplicates=False)
    entries = [(m.name, m.python_code, m.triton_code) for m in problems]
    entries += [rng.choice(entries[: max(1, len(entries) // 2)]) for _ in range(duplicates)]
    entries += [(rng.choice(("Model", "Net", "Block")), "", "") for _ in range(empty_code)]
    rng.shuffle(entries)
    rows = []
    for uuid, (name, code, triton_code) in enumerate(entries):
        repo = f"{rng.choice(_GH_USERS)}/{rng.choice(_GH_REPOS)}"
        rows.append(
            {
                "module_name": name,
                "python_code": code,
                "triton_code": triton_code,
                "uuid": uuid,
                "repo_name": repo,
                "repo_link": f"https://github.com/{repo}",
                "licenses": list(rng.choice(_LICENSES)),
                "stars": min(int(rng.paretovariate(0.8)) - 1, 250_000),
                "sha": f"{rng.getrandbits(160):040x}",
                "entry_point": name,
            }
        )
    return rows


def write_kernelbook(path: str | Path, n_rows: int = 50, seed: int = 0, duplicates: int = 4, empty_code: int = 2) -> Path:
    """Write :func:`kernelbook_rows` to ``path`` as parquet with :data:`KERNELBOOK_ARROW_SCHEMA`."""
    rows = kernelbook_rows(n_rows, seed, duplicates, empty_code)
    _write_table(pa.Table.from_pylist(rows, schema=KERNELBOOK_ARROW_SCHEMA), path)
    return Path(path)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (to show that regeneration is byte-identical)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
