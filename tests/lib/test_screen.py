"""The kernel screen (kernelbook_lib.screen): each rejection kind, each flag, the traps a careless
detector falls into, and inputs it must decide without raising.

Every solution here was written for these tests in the shape of real ones (a ``class XNew(nn.Module)``
whose ``forward`` launches ``@triton.jit`` kernels, or a TritonBench-style function); none is
copied from the third-party data.
"""

from __future__ import annotations

import ast
import textwrap

import pytest

from kernelbook_lib.screen import MAX_SOLUTION_CHARS, REJECT_KINDS, SCREEN_VERSION, ScreenVerdict, screen

HEADER = """
import torch
import torch.nn as nn
import torch.nn.functional as F
import triton
import triton.language as tl
"""

RELU_KERNEL = """
@triton.jit
def relu_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    tl.store(y_ptr + offs, tl.maximum(x, 0.0), mask=mask)
"""

COPY_KERNEL = """
@triton.jit
def copy_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(dst_ptr + offs, tl.load(src_ptr + offs, mask=mask), mask=mask)
"""

LAUNCH_HELPER = """
def triton_relu(x):
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    relu_kernel[(triton.cdiv(n, 1024),)](x, y, n, BLOCK=1024)
    return y
"""

REF_RELU = """
import torch
import torch.nn as nn

class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return torch.relu(x)

def get_inputs():
    return [torch.rand(64, 64)]

def get_init_inputs():
    return []
"""

REF_CONV_RELU = """
import torch
import torch.nn as nn

class Model(nn.Module):
    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k)

    def forward(self, x):
        return torch.relu(self.conv(x))

def get_inputs():
    return [torch.rand(2, 3, 16, 16)]

def get_init_inputs():
    return [3, 8, 3]
"""

REF_CONV = """
import torch
import torch.nn as nn

class Model(nn.Module):
    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, bias=False)

    def forward(self, x):
        return self.conv(x)

def get_init_inputs():
    return [3, 8, 3]
"""

REF_LINEAR_RELU = """
import torch
import torch.nn as nn

class Model(nn.Module):
    def __init__(self, fin, fout):
        super().__init__()
        self.fc = nn.Linear(fin, fout)

    def forward(self, x):
        return torch.relu(self.fc(x))

def get_init_inputs():
    return [32, 16]
"""

REF_MSE = """
import torch
import torch.nn as nn

class Model(nn.Module):
    def forward(self, a, b):
        return torch.mean((a - b) ** 2)
"""


def solution(*parts: str) -> str:
    return HEADER + "\n".join(textwrap.dedent(p) for p in parts)


def module(forward: str, init: str = "pass", extra: str = "", name: str = "ModelNew") -> str:
    """A ``class <name>(nn.Module)`` with the given ``__init__`` body and ``forward`` body."""
    return (
        f"class {name}(nn.Module):\n"
        "    def __init__(self, *args, **kwargs):\n"
        "        super().__init__()\n"
        + textwrap.indent(textwrap.dedent(init).strip(), " " * 8) + "\n\n"
        "    def forward(self, x):\n"
        + textwrap.indent(textwrap.dedent(forward).strip(), " " * 8) + "\n"
        + (textwrap.indent(textwrap.dedent(extra).strip(), " " * 4) + "\n" if extra else "")
    )


CLEAN = solution(RELU_KERNEL, LAUNCH_HELPER, module("return triton_relu(x)"))


def check(code: str, reference: str = REF_RELU) -> ScreenVerdict:
    verdict = screen(code, reference)
    assert verdict.reject is None or verdict.reject in REJECT_KINDS
    assert verdict.flags == tuple(sorted(verdict.flags))
    if verdict.reject is not None:
        assert verdict.flags == () and verdict.detail
    return verdict


def test_api_constants():
    assert SCREEN_VERSION == "screen-v1"
    assert REJECT_KINDS == ("no_triton", "not_launched", "default_path_torch", "torch_computes_kernel_copies",
                            "try_fallback", "reference_bypass", "cached_output", "constant_output", "unparsable")


# --- kept clean --------------------------------------------------------------------------------


def test_a_clean_kernel_is_kept_with_no_flag():
    verdict = check(CLEAN)
    assert (verdict.reject, verdict.flags, verdict.detail, verdict.reason) == (None, (), "", None)
    assert (verdict.kernels_defined, verdict.kernels_launched) == (1, 1)


def test_a_kernel_launched_from_a_method_is_kept():
    code = solution(RELU_KERNEL, module("return self._launch(x)", extra="""
        def _launch(self, t):
            out = torch.empty_like(t)
            relu_kernel[(triton.cdiv(t.numel(), 256),)](t, out, t.numel(), BLOCK=256)
            return out
    """))
    assert check(code).flags == ()
    assert check(code).kernels_launched == 1


def test_a_launcher_helper_outside_the_class_is_followed():
    code = solution(RELU_KERNEL, """
        def _grid(n):
            return (triton.cdiv(n, 512),)

        def launch(t):
            out = torch.empty_like(t)
            relu_kernel[_grid(t.numel())](t, out, t.numel(), BLOCK=512)
            return out

        def apply_relu(t):
            return launch(t.contiguous())
    """, module("return apply_relu(x)"))
    verdict = check(code)
    assert (verdict.reject, verdict.flags, verdict.kernels_launched) == (None, (), 1)


def test_autotune_with_a_grid_lambda_is_a_launch():
    code = solution("""
        @triton.autotune(configs=[triton.Config({"BLOCK": 128}), triton.Config({"BLOCK": 256})], key=["n"])
        @triton.jit
        def tuned_relu(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            x = tl.load(x_ptr + offs, mask=offs < n)
            tl.store(y_ptr + offs, tl.where(x > 0, x, 0.0), mask=offs < n)
    """, module("""
        y = torch.empty_like(x)
        n = x.numel()
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK"]),)
        tuned_relu[grid](x, y, n)
        return y
    """))
    verdict = check(code)
    assert (verdict.reject, verdict.flags, verdict.kernels_defined, verdict.kernels_launched) == (None, (), 1, 1)


def test_allocation_and_a_final_sum_of_partial_results_are_glue():
    code = solution("""
        @triton.jit
        def sq_diff_partial(a_ptr, b_ptr, part_ptr, n, BLOCK: tl.constexpr):
            pid = tl.program_id(0)
            offs = pid * BLOCK + tl.arange(0, BLOCK)
            m = offs < n
            d = tl.load(a_ptr + offs, mask=m, other=0.0) - tl.load(b_ptr + offs, mask=m, other=0.0)
            tl.store(part_ptr + pid, tl.sum(d * d, axis=0))

        def mse(a, b):
            n = a.numel()
            blocks = triton.cdiv(n, 1024)
            partials = torch.empty(blocks, device=a.device, dtype=torch.float32)
            sq_diff_partial[(blocks,)](a, b, partials, n, BLOCK=1024)
            total = partials.sum()
            return total / n

        class ModelNew(nn.Module):
            def forward(self, a, b):
                return mse(a.contiguous(), b.contiguous())
    """)
    verdict = check(code, REF_MSE)
    assert (verdict.reject, verdict.flags) == (None, ())


def test_a_reduction_of_a_full_size_buffer_is_compute_not_glue():
    code = solution("""
        @triton.jit
        def sq_diff(a_ptr, b_ptr, out_ptr, n, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            m = offs < n
            d = tl.load(a_ptr + offs, mask=m) - tl.load(b_ptr + offs, mask=m)
            tl.store(out_ptr + offs, d * d, mask=m)

        class ModelNew(nn.Module):
            def forward(self, a, b):
                buf = torch.empty_like(a)
                sq_diff[(triton.cdiv(a.numel(), 256),)](a, b, buf, a.numel(), BLOCK=256)
                return buf.mean()
    """)
    verdict = check(code, REF_MSE)
    assert verdict.flags == ("partial:mean",)
    assert "buf.mean" in verdict.detail


def test_pass_and_except_in_docstrings_and_comments_do_not_count():
    code = solution(RELU_KERNEL, LAUNCH_HELPER, '''
        class ModelNew(nn.Module):
            """A single-pass kernel: every element except the padding is written once.

            try: torch.relu(x) except: pass   (this sentence is not code)
            """

            def forward(self, x):
                # try: return torch.relu(x) / except: fall back -- a comment, not code
                return triton_relu(x)  # pass
    ''')
    assert check(code).flags == ()
    assert check(code).reject is None


def test_try_import_triton_that_re_raises_is_fine():
    code = HEADER.replace("import triton\nimport triton.language as tl\n", "") + textwrap.dedent("""
        try:
            import triton
            import triton.language as tl
        except ImportError:
            raise RuntimeError("this solution needs Triton")
    """) + textwrap.dedent(RELU_KERNEL) + textwrap.dedent(LAUNCH_HELPER) + module("return triton_relu(x)")
    verdict = check(code)
    assert (verdict.reject, verdict.flags) == (None, ())


def test_a_cuda_guard_that_raises_is_not_a_fallback():
    code = solution(RELU_KERNEL, LAUNCH_HELPER, module("""
        if not x.is_cuda:
            raise ValueError("CUDA tensors only")
        return triton_relu(x)
    """))
    assert check(code).flags == ()


def test_autograd_function_apply_runs_its_forward():
    code = solution(RELU_KERNEL, """
        class _Relu(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                y = torch.empty_like(x)
                relu_kernel[(triton.cdiv(x.numel(), 128),)](x, y, x.numel(), BLOCK=128)
                ctx.save_for_backward(x)
                return y

            @staticmethod
            def backward(ctx, grad):
                (x,) = ctx.saved_tensors
                return grad * (x > 0)
    """, module("return _Relu.apply(x)"))
    verdict = check(code)
    assert (verdict.reject, verdict.flags, verdict.kernels_launched) == (None, (), 1)


def test_kernels_reached_through_partial_dicts_attributes_and_arguments():
    code = solution(RELU_KERNEL, """
        import functools

        KERNELS = {"relu": relu_kernel}

        def run(kernel, t):
            out = torch.empty_like(t)
            kernel[(triton.cdiv(t.numel(), 64),)](t, out, t.numel(), BLOCK=64)
            return out
    """, module("""
        a = run(self.kernel, x)
        b = run(KERNELS["relu"], a)
        out = torch.empty_like(b)
        launch = functools.partial(relu_kernel[(triton.cdiv(b.numel(), 64),)], BLOCK=64)
        launch(b, out, b.numel())
        return out
    """, init="self.kernel = relu_kernel"))
    verdict = check(code)
    assert (verdict.reject, verdict.flags, verdict.kernels_launched) == (None, (), 1)


def test_a_tritonbench_function_named_like_the_reference_is_the_entry_point():
    reference = """
import torch

def leaky(x, slope=0.01):
    return torch.where(x > 0, x, x * slope)
"""
    code = solution("""
        @triton.jit
        def leaky_kernel(x_ptr, y_ptr, n, slope, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            x = tl.load(x_ptr + offs, mask=offs < n)
            tl.store(y_ptr + offs, tl.where(x > 0, x, x * slope), mask=offs < n)

        def leaky(x, slope=0.01):
            y = torch.empty_like(x)
            leaky_kernel[(triton.cdiv(x.numel(), 256),)](x, y, x.numel(), slope, BLOCK=256)
            return y

        def unrelated_helper(x):
            return torch.sigmoid(x)
    """)
    verdict = check(code, reference)
    assert (verdict.reject, verdict.flags) == (None, ())
    with_torch = code.replace("    return y\n", "    return torch.clamp(y, max=6.0)\n")
    assert check(with_torch, reference).flags == ("partial:clamp",)


def test_module_list_and_sequential_of_own_blocks_are_followed():
    code = solution(RELU_KERNEL, LAUNCH_HELPER, """
        class Block(nn.Module):
            def forward(self, x):
                return triton_relu(x)

        class ModelNew(nn.Module):
            def __init__(self, depth=3):
                super().__init__()
                self.blocks = nn.ModuleList([Block() for _ in range(depth)])
                self.tail = nn.Sequential(Block(), Block())

            def forward(self, x):
                for block in self.blocks:
                    x = block(x)
                return self.tail(x)
    """)
    verdict = check(code)
    assert (verdict.reject, verdict.flags) == (None, ())


def test_eval_in_init_makes_the_eval_branch_the_default():
    code = solution(RELU_KERNEL, LAUNCH_HELPER, module("""
        if self.training:
            return torch.relu(x)
        return triton_relu(x)
    """, init="self.eval()"))
    assert check(code).flags == ()


# --- flags -------------------------------------------------------------------------------------


def test_a_pytorch_layer_left_in_forward_is_partial_and_named_like_the_reference():
    code = solution(RELU_KERNEL, LAUNCH_HELPER, """
        class ModelNew(nn.Module):
            def __init__(self, cin, cout, k):
                super().__init__()
                self.conv = nn.Conv2d(cin, cout, k)

            def forward(self, x):
                y = self.conv(x)
                return triton_relu(y)
    """)
    verdict = check(code, REF_CONV_RELU)
    assert (verdict.reject, verdict.flags) == (None, ("partial:conv2d",))
    assert "forward calls self.conv (nn.Conv2d)" in verdict.detail
    assert "line " in verdict.detail


def test_a_sequential_of_torch_layers_is_partial():
    code = solution(RELU_KERNEL, LAUNCH_HELPER, """
        class ModelNew(nn.Module):
            def __init__(self, cin, cout, k):
                super().__init__()
                self.features = nn.Sequential(nn.Conv2d(cin, cout, k), nn.BatchNorm2d(cout))

            def forward(self, x):
                return triton_relu(self.features(x))
    """)
    assert check(code, REF_CONV_RELU).flags == ("partial:batch_norm,conv2d",)


def test_a_matmul_operator_is_named_as_the_reference_names_it():
    code = solution(RELU_KERNEL, LAUNCH_HELPER, """
        class ModelNew(nn.Module):
            def __init__(self, fin, fout):
                super().__init__()
                self.weight = nn.Parameter(torch.randn(fout, fin))
                self.bias = nn.Parameter(torch.zeros(fout))

            def forward(self, x):
                return triton_relu(x @ self.weight.t())
    """)
    verdict = check(code, REF_LINEAR_RELU)
    assert verdict.flags == ("partial:linear",)
    assert "uses @" in verdict.detail


# --- parameter preparation is glue -------------------------------------------------------------

REF_BN_RELU = """
import torch
import torch.nn as nn

class Model(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.norm(x))

def get_inputs():
    return [torch.rand(2, 6, 12, 12)]

def get_init_inputs():
    return [6]
"""

AFFINE_RELU_KERNEL = """
@triton.jit
def affine_relu_kernel(x_ptr, scale_ptr, shift_ptr, y_ptr, n, channels, plane, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    ch = (offs // plane) % channels
    v = tl.load(x_ptr + offs, mask=mask)
    a = tl.load(scale_ptr + ch, mask=mask)
    b = tl.load(shift_ptr + ch, mask=mask)
    tl.store(y_ptr + offs, tl.maximum(v * a + b, 0.0), mask=mask)
"""


def bn_relu_solution(fold: str) -> str:
    """A BatchNorm2d + ReLU solution whose launcher computes ``gain`` and ``offset`` (per-channel
    vectors) with the statements ``fold`` in PyTorch, then launches one kernel over the input."""
    body = textwrap.dedent("""
        def launch_norm_act(inp, norm):
        FOLD
            inp = inp.contiguous()
            res = torch.empty_like(inp)
            total = inp.numel()
            grid = (triton.cdiv(total, 512),)
            affine_relu_kernel[grid](inp, gain, offset, res, total, inp.shape[1],
                                     inp.shape[2] * inp.shape[3], BLOCK=512)
            return res

        class ModelNew(nn.Module):
            def __init__(self, channels):
                super().__init__()
                self.norm = nn.BatchNorm2d(channels)
                self.act = nn.ReLU()

            def forward(self, x):
                return launch_norm_act(x, self.norm)
    """)
    return solution(AFFINE_RELU_KERNEL, body.replace("FOLD", textwrap.indent(textwrap.dedent(fold).strip(), " " * 4)))


def test_folding_batch_norm_parameters_in_pytorch_is_glue():
    code = bn_relu_solution("""
        gain = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        offset = norm.bias - norm.running_mean * gain
    """)
    verdict = check(code, REF_BN_RELU)
    assert (verdict.reject, verdict.flags, verdict.detail) == (None, (), "")
    # Spelled with tensor methods, in-place updates and a Python scalar read from a parameter.
    methods = bn_relu_solution("""
        gain = norm.running_var.add(norm.eps).rsqrt()
        gain *= norm.weight
        offset = norm.bias.clone()
        offset -= norm.running_mean.mul(gain)
        offset = offset + float(norm.weight.sum().item()) * 0.0
    """)
    verdict = check(methods, REF_BN_RELU)
    assert (verdict.reject, verdict.flags) == (None, ())


def test_folding_with_a_statistic_of_the_input_stays_partial():
    code = bn_relu_solution("""
        mean = inp.mean(dim=(0, 2, 3))
        var = inp.var(dim=(0, 2, 3), unbiased=False)
        gain = norm.weight / torch.sqrt(var + norm.eps)
        offset = norm.bias - mean * gain
    """)
    verdict = check(code, REF_BN_RELU)
    assert verdict.reject is None
    assert verdict.flags == ("partial:add,div,mean,mul,sqrt,sub,var",)
    assert "inp.mean" in verdict.detail


def test_folding_with_a_value_from_a_kernel_output_stays_compute():
    partial_sums = """
        @triton.jit
        def sum_partial(x_ptr, part_ptr, n, BLOCK: tl.constexpr):
            pid = tl.program_id(0)
            offs = pid * BLOCK + tl.arange(0, BLOCK)
            tl.store(part_ptr + pid, tl.sum(tl.load(x_ptr + offs, mask=offs < n, other=0.0), axis=0))
    """
    statistic = """
        blocks = triton.cdiv(inp.numel(), 512)
        part = torch.empty(blocks, device=inp.device, dtype=torch.float32)
        sum_partial[(blocks,)](inp, part, inp.numel(), BLOCK=512)
        mu = {read}
        gain = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        offset = norm.bias - mu * gain
    """
    for read in ("part.sum().item() / inp.numel()", "float(part.sum()) / inp.numel()",
                 "torch.tensor(part.sum().item())"):
        code = solution(partial_sums) + bn_relu_solution(statistic.format(read=read))
        verdict = check(code, REF_BN_RELU)
        assert verdict.flags == ("partial:mul,sub",), read
        assert "mu * gain" in verdict.detail


def test_a_buffer_a_kernel_writes_is_no_longer_a_parameter():
    code = solution(AFFINE_RELU_KERNEL, COPY_KERNEL, """
        class ModelNew(nn.Module):
            def __init__(self, channels):
                super().__init__()
                self.norm = nn.BatchNorm2d(channels)
                self.register_buffer("stat", torch.zeros(channels))

            def forward(self, x):
                # a kernel writes the buffer from the input, then PyTorch computes with it
                copy_kernel[(1,)](x, self.stat, self.stat.numel(), BLOCK=64)
                gain = self.norm.weight / torch.sqrt(self.stat + self.norm.eps)
                shift = self.norm.bias - self.norm.running_mean * gain
                y = torch.empty_like(x)
                n = x.numel()
                affine_relu_kernel[(triton.cdiv(n, 256),)](x, gain, shift, y, n, x.shape[1],
                                                           x.shape[2] * x.shape[3], BLOCK=256)
                return y
    """)
    verdict = check(code, REF_BN_RELU)
    assert verdict.flags == ("partial:add,div,mul,sqrt,sub",)  # gain, and so shift, derive from the input
    assert "self.stat + self.norm.eps" in verdict.detail


def test_weights_prepared_in_init_or_set_up_code_stay_parameters():
    code = bn_relu_solution("""
        gain = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        offset = norm.bias - norm.running_mean * gain
    """).replace("self.act = nn.ReLU()", "self.act = nn.ReLU()\n"
                 "        with torch.no_grad():\n"
                 "            self.norm.weight.copy_(torch.rand(channels))")
    assert "copy_" in code
    verdict = check(code, REF_BN_RELU)
    assert (verdict.reject, verdict.flags) == (None, ())


MATMUL_KERNEL = """
@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        a = tl.load(a_ptr + rm[:, None] * K + (k0 + rk)[None, :])
        b = tl.load(b_ptr + (k0 + rk)[:, None] * N + rn[None, :])
        acc += tl.dot(a, b)
    tl.store(c_ptr + rm[:, None] * N + rn[None, :], tl.maximum(acc, 0.0))
"""


def linear_solution(forward: str, init: str = "self.fc = nn.Linear(fin, fout)") -> str:
    """A Linear + ReLU solution: ``forward`` (which calls ``triton_mm_relu(a, b)``, a Triton
    ``relu(a @ b)``) and the ``__init__`` statements ``init``."""
    body = textwrap.dedent("""
        def triton_mm_relu(a, b):
            M, K = a.shape
            N = b.shape[1]
            out = torch.empty((M, N), device=a.device, dtype=a.dtype)
            matmul_kernel[(triton.cdiv(M, 32), triton.cdiv(N, 32))](a, b, out, M, N, K, BM=32, BN=32, BK=32)
            return out

        class ModelNew(nn.Module):
            def __init__(self, fin, fout):
                super().__init__()
        INIT

            def forward(self, x):
        FORWARD
    """)
    return solution(MATMUL_KERNEL, body.replace("INIT", textwrap.indent(textwrap.dedent(init).strip(), " " * 8))
                    .replace("FORWARD", textwrap.indent(textwrap.dedent(forward).strip(), " " * 8)))


def test_a_linear_weight_transposed_or_scaled_in_pytorch_for_a_triton_matmul_is_clean():
    for forward in (
        "w = self.fc.weight.t().contiguous()\nreturn triton_mm_relu(x, w)",
        "w = (self.fc.weight * 0.5).t().contiguous() * 2.0\nreturn triton_mm_relu(x, w)",
        "return triton_mm_relu(x, torch.transpose(self.fc.weight, 0, 1) / self.fc.weight.shape[0] * x.shape[0])",
    ):
        verdict = check(linear_solution(forward), REF_LINEAR_RELU)
        assert (verdict.reject, verdict.flags) == (None, ()), forward
    # Weights folded in forward and kept on the module are still parameters, not a cached output.
    kept = linear_solution("""
        if self.wt is None:
            self.wt = self.fc.weight.t().contiguous() * 1.0
        return triton_mm_relu(x, self.wt)
    """, init="self.fc = nn.Linear(fin, fout)\nself.wt = None")
    verdict = check(kept, REF_LINEAR_RELU)
    assert (verdict.reject, verdict.flags) == (None, ())
    # Two parameters multiplied with `@` (a low-rank factorisation folded) is parameter preparation too.
    low_rank = linear_solution("return triton_mm_relu(x, (self.u @ self.v).t())",
                               init="self.u = nn.Parameter(torch.randn(fout, 4))\n"
                                    "self.v = nn.Parameter(torch.randn(4, fin))")
    verdict = check(low_rank, REF_LINEAR_RELU)
    assert (verdict.reject, verdict.flags) == (None, ())


def test_arithmetic_mixing_a_parameter_with_the_input_stays_compute():
    verdict = check(linear_solution("return triton_mm_relu(x @ self.fc.weight.t(), torch.eye(x.shape[0]))"),
                    REF_LINEAR_RELU)
    assert verdict.flags == ("partial:linear",)
    scaled = check(linear_solution("return triton_mm_relu(x * self.fc.weight[0], self.fc.weight.t())"),
                   REF_LINEAR_RELU)
    assert scaled.flags == ("partial:mul",)
    joined = check(linear_solution("return triton_mm_relu(x, torch.cat([self.fc.weight, x]).t() * 2)"),
                   REF_LINEAR_RELU)
    assert joined.flags == ("partial:mul",)
    unknown = check(linear_solution("return triton_mm_relu(x, self.fc.weight.t() * helper_scale(x))"),
                    REF_LINEAR_RELU)
    assert unknown.flags == ("partial:mul",)
    # A function's `weight` argument is an input, not a parameter of a module (TritonBench).
    reference = """
import torch

def scaled_mm_relu(x, weight):
    return torch.relu(x @ (weight * 2.0))
"""
    function = solution(MATMUL_KERNEL, """
        def scaled_mm_relu(x, weight):
            w = (weight * 2.0).contiguous()
            out = torch.empty((x.shape[0], w.shape[1]), device=x.device, dtype=x.dtype)
            matmul_kernel[(1, 1)](x, w, out, x.shape[0], w.shape[1], x.shape[1], BM=32, BN=32, BK=32)
            return out
    """)
    assert check(function, reference).flags == ("partial:mul",)


def test_a_non_cuda_branch_computing_with_pytorch_is_a_device_fallback():
    early = solution(RELU_KERNEL, LAUNCH_HELPER, module("""
        if not x.is_cuda:
            return torch.relu(x)
        return triton_relu(x)
    """))
    late = solution(RELU_KERNEL, LAUNCH_HELPER, module("""
        if x.device.type == "cuda":
            return triton_relu(x)
        return F.relu(x)
    """))
    for code in (early, late):
        verdict = check(code)
        assert (verdict.reject, verdict.flags) == (None, ("fallback:device",))
        assert "non-CUDA branch" in verdict.detail


def test_a_pytorch_branch_for_inputs_the_kernel_does_not_take_is_flagged():
    code = solution(RELU_KERNEL, LAUNCH_HELPER, module("""
        if x.is_contiguous() and x.dim() == 2:
            return triton_relu(x)
        return torch.relu(x)
    """))
    assert check(code).flags == ("fallback:input",)


def test_an_early_return_to_pytorch_before_the_kernel_path_is_a_fallback():
    code = solution(RELU_KERNEL, LAUNCH_HELPER, module("""
        if x.is_sparse:
            return torch.relu(x.to_dense())
        return triton_relu(x)
    """))
    verdict = check(code)
    assert verdict.flags == ("fallback:input",)
    assert "torch.relu" in verdict.detail


def test_optional_arguments_of_a_function_entry_are_undecided():
    reference = """
import torch

def relu_out(x, out=None):
    return torch.relu(x, out=out)
"""
    code = solution(RELU_KERNEL, """
        def relu_out(x, out=None):
            if out is None:
                out = torch.empty_like(x)
            relu_kernel[(triton.cdiv(x.numel(), 256),)](x, out, x.numel(), BLOCK=256)
            return out
    """)
    assert check(code, reference).flags == ()
    only_given = solution(RELU_KERNEL, """
        def relu_out(x, out=None):
            if out is not None:
                relu_kernel[(triton.cdiv(x.numel(), 256),)](x, out, x.numel(), BLOCK=256)
                return out
            return torch.relu(x)
    """)
    assert check(only_given, reference).flags == ("fallback:input",)


def test_inductor_extern_kernels_are_a_library_flag():
    code = solution("""
        from torch._inductor.select_algorithm import extern_kernels
        empty_strided_cuda = torch._C._dynamo.guards._empty_strided_cuda

        @triton.jit
        def fused_bias_relu_0(in_out_ptr0, in_ptr0, xnumel, XBLOCK: tl.constexpr):
            xindex = tl.program_id(0) * XBLOCK + tl.arange(0, XBLOCK)
            xmask = xindex < xnumel
            tmp0 = tl.load(in_out_ptr0 + xindex, xmask)
            tmp1 = tl.load(in_ptr0 + xindex % 16, xmask)
            tl.store(in_out_ptr0 + xindex, tl.maximum(tmp0 + tmp1, 0.0), xmask)

        def call(args):
            weight, bias, x = args
            args.clear()
            buf0 = empty_strided_cuda((64, 16), (16, 1), torch.float32)
            extern_kernels.mm(x, weight.t(), out=buf0)
            fused_bias_relu_0[(8,)](buf0, bias, 1024, XBLOCK=128)
            return (buf0, x)

        class ModelNew(nn.Module):
            def __init__(self, fin, fout):
                super().__init__()
                self.fc = nn.Linear(fin, fout)

            def forward(self, input_0):
                output = call([self.fc.weight, self.fc.bias, input_0])
                return output[0]
    """)
    verdict = check(code, REF_LINEAR_RELU)
    assert (verdict.reject, verdict.flags) == (None, ("library:extern_kernels",))
    assert "extern_kernels.mm" in verdict.detail


def test_a_cast_to_fp16_inside_a_kernel_is_flagged_unless_the_reference_is_fp16():
    code = solution("""
        @triton.jit
        def half_relu(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            x = tl.load(x_ptr + offs, mask=offs < n).to(tl.float16)
            tl.store(y_ptr + offs, tl.maximum(x, 0.0), mask=offs < n)
    """, module("""
        y = torch.empty_like(x)
        half_relu[(triton.cdiv(x.numel(), 128),)](x, y, x.numel(), BLOCK=128)
        return y
    """))
    verdict = check(code)
    assert verdict.flags == ("precision:fp16",)
    assert "half_relu casts to fp16" in verdict.detail
    fp16_reference = REF_RELU.replace("torch.rand(64, 64)", "torch.rand(64, 64).half()")
    assert check(code, fp16_reference).flags == ()


def test_an_input_cast_to_half_in_the_wrapper_is_flagged():
    code = solution(RELU_KERNEL, LAUNCH_HELPER, module("return triton_relu(x.half()).float()"))
    assert check(code).flags == ("precision:fp16",)


@pytest.mark.parametrize(("snippet", "flag"), [
    ("stream = torch.cuda.Stream()", "timing:stream"),
    ("import threading\nworker = threading.Thread(target=print)", "timing:thread"),
    ("lazy = torch.Tensor._make_subclass(torch.Tensor, torch.empty(1))", "timing:subclass"),
    ("import time\ntime.perf_counter = lambda: 0.0", "timing:patch"),
    ("torch.cuda.Event = object", "timing:patch"),
])
def test_timing_tricks_are_flagged(snippet, flag):
    code = solution(RELU_KERNEL, LAUNCH_HELPER, snippet, module("return triton_relu(x)"))
    verdict = check(code)
    assert verdict.reject is None
    assert verdict.flags == (flag,)


def test_a_stream_named_only_in_a_docstring_or_string_is_not_a_timing_trick():
    code = solution(RELU_KERNEL, LAUNCH_HELPER, '''
        NOTE = "torch.cuda.Stream() is not used here; time.perf_counter = 0 neither"

        class ModelNew(nn.Module):
            """Runs on the default torch.cuda.Stream, no threading.Thread."""

            def forward(self, x):
                return triton_relu(x)
    ''')
    assert check(code).flags == ()


# --- rejections --------------------------------------------------------------------------------


def test_plain_pytorch_is_no_triton():
    code = solution(module("return torch.relu(x)"))
    verdict = check(code)
    assert verdict.reason == "not_a_kernel:no_triton"
    assert "torch.relu" in verdict.detail
    assert verdict.kernels_defined == 0


def test_a_cuda_extension_is_no_triton():
    code = solution('''
        from torch.utils.cpp_extension import load_inline
        source = """
        __global__ void relu(const float* x, float* y, int n) {}  // @triton.jit in a string
        """
        ext = load_inline(name="relu_ext", cpp_sources="", cuda_sources=source, functions=["relu"])
    ''', module("return ext.relu(x)"))
    assert check(code).reason == "not_a_kernel:no_triton"


def test_a_library_matmul_without_an_own_kernel_is_no_triton():
    code = solution("""
        import triton.ops as tops
    """, module("return torch.relu(tops.matmul(x, x.t()))"))
    verdict = check(code)
    assert verdict.reject == "no_triton"
    assert "tops.matmul" in verdict.detail


def test_kernels_never_launched_are_not_launched():
    code = solution(RELU_KERNEL, module("return torch.relu(x)"))
    verdict = check(code)
    assert verdict.reason == "not_a_kernel:not_launched"
    assert "relu_kernel" in verdict.detail
    called_without_grid = solution(RELU_KERNEL, module("""
        y = torch.empty_like(x)
        relu_kernel(x, y, x.numel(), 128)
        return y
    """))
    assert check(called_without_grid).reject == "not_launched"


def test_template_debris_that_fails_at_import_is_not_launched():
    code = "{{ code }}\n" + solution(RELU_KERNEL, LAUNCH_HELPER, module("return triton_relu(x)"))
    verdict = check(code)
    assert verdict.reject == "not_launched"
    assert "line 1" in verdict.detail


def test_a_kernel_only_in_eval_mode_is_default_path_torch():
    code = solution(RELU_KERNEL, LAUNCH_HELPER, """
        class ModelNew(nn.Module):
            def __init__(self, features):
                super().__init__()
                self.bn = nn.BatchNorm2d(features)

            def forward(self, x):
                if self.training:
                    return torch.relu(self.bn(x))
                return triton_relu(self.bn(x))
    """)
    verdict = check(code)
    assert verdict.reason == "not_a_kernel:default_path_torch"
    assert "eval-mode branch" in verdict.detail
    assert "self.bn (nn.BatchNorm2d)" in verdict.detail


def test_a_kernel_behind_a_flag_init_leaves_off_is_default_path_torch():
    code = solution(RELU_KERNEL, LAUNCH_HELPER, """
        class ModelNew(nn.Module):
            def __init__(self, use_triton=False):
                super().__init__()
                self.use_triton = use_triton

            def forward(self, x):
                if self.use_triton:
                    return triton_relu(x)
                return torch.relu(x)
    """)
    assert check(code).reject == "default_path_torch"
    assert check(code.replace("use_triton=False", "use_triton=True")).flags == ()


def test_a_kernel_that_copies_a_pytorch_convolution_is_rejected():
    code = solution(COPY_KERNEL, """
        class ModelNew(nn.Module):
            def __init__(self, cin, cout, k):
                super().__init__()
                self.conv = nn.Conv2d(cin, cout, k, bias=False)

            def forward(self, x):
                y = self.conv(x)
                out = torch.empty_like(y)
                copy_kernel[(triton.cdiv(y.numel(), 512),)](y, out, y.numel(), BLOCK=512)
                return out
    """)
    verdict = check(code, REF_CONV)
    assert verdict.reason == "not_a_kernel:torch_computes_kernel_copies"
    assert "self.conv (nn.Conv2d)" in verdict.detail


EXTRA_BIAS = solution("""
    @triton.jit
    def add_bias(y_ptr, b_ptr, n, hw, c, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        y = tl.load(y_ptr + offs, mask=m)
        b = tl.load(b_ptr + (offs // hw) % c, mask=m)
        tl.store(y_ptr + offs, y + b, mask=m)

    class ModelNew(nn.Module):
        def __init__(self, cin, cout, k):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, bias=False)
            self.bias = nn.Parameter(torch.zeros(cout))

        def forward(self, x):
            y = self.conv(x)
            hw = y.shape[2] * y.shape[3]
            add_bias[(triton.cdiv(y.numel(), 256),)](y, self.bias, y.numel(), hw, y.shape[1], BLOCK=256)
            return y
""")


def test_without_a_reference_a_copy_kernel_after_pytorch_is_rejected():
    code = solution(COPY_KERNEL, module("""
        y = torch.tanh(x)
        out = torch.empty_like(y)
        copy_kernel[(triton.cdiv(y.numel(), 512),)](y, out, y.numel(), BLOCK=512)
        return out
    """))
    verdict = check(code, "")
    assert verdict.reject == "torch_computes_kernel_copies"
    assert "only copies or casts" in verdict.detail


def test_a_kernel_moving_data_as_the_reference_does_is_not_a_copy():
    reference = """
import torch
import torch.nn.functional as F

def conv_shuffle(x, w):
    return F.pixel_shuffle(F.conv2d(x, w), 2)
"""
    code = solution(COPY_KERNEL, """
        def conv_shuffle(x, w):
            y = F.conv2d(x, w)
            out = torch.empty_like(y)
            copy_kernel[(triton.cdiv(y.numel(), 512),)](y, out, y.numel(), BLOCK=512)
            return out
    """)
    assert check(code, reference).flags == ("partial:conv2d",)


def test_a_kernel_adding_a_bias_the_reference_lacks_is_rejected():
    verdict = check(EXTRA_BIAS, REF_CONV)
    assert verdict.reject == "torch_computes_kernel_copies"
    assert "every operation of the reference" in verdict.detail
    # Against a reference that has the bias, the same kernel does one of its operations.
    with_bias = REF_CONV.replace("bias=False", "bias=True").replace("return self.conv(x)",
                                                                    "return self.conv(x) + 1.0")
    assert check(EXTRA_BIAS, with_bias).flags == ("partial:conv2d",)


def test_pytorch_in_the_handler_of_a_try_around_a_launch_is_a_try_fallback():
    code = solution(RELU_KERNEL, LAUNCH_HELPER, module("""
        try:
            return triton_relu(x)
        except Exception:
            return torch.relu(x)
    """))
    verdict = check(code)
    assert verdict.reason == "not_a_kernel:try_fallback"
    assert "torch.relu" in verdict.detail


def test_subclassing_or_building_the_reference_is_a_bypass():
    subclass = solution(RELU_KERNEL, "class ModelNew(Model):\n    pass\n")
    built = solution(RELU_KERNEL, LAUNCH_HELPER, module("return triton_relu(self.ref(x))", init="self.ref = Model()"))
    via_super = solution(RELU_KERNEL, """
        class ModelNew(Model):
            def forward(self, x):
                return super().forward(x)
    """)
    for code in (subclass, built, via_super):
        verdict = check(code)
        assert verdict.reason == "not_a_kernel:reference_bypass", code
        assert "Model" in verdict.detail


def test_outputs_cached_across_calls_are_rejected():
    module_cache = solution(RELU_KERNEL, LAUNCH_HELPER, """
        _CACHE = {}

        class ModelNew(nn.Module):
            def forward(self, x):
                key = (x.data_ptr(), tuple(x.shape))
                if key in _CACHE:
                    return _CACHE[key]
                out = triton_relu(x)
                _CACHE[key] = out
                return out
    """)
    attribute_cache = solution(RELU_KERNEL, LAUNCH_HELPER, module("""
        key = id(x)
        if key not in self.cache:
            self.cache[key] = triton_relu(x)
        return self.cache[key]
    """, init="self.cache = {}"))
    for code in (module_cache, attribute_cache):
        verdict = check(code)
        assert verdict.reason == "not_a_kernel:cached_output"
        assert "earlier call" in verdict.detail


def test_constant_outputs_are_rejected():
    unwritten = solution(RELU_KERNEL, module("""
        scratch = torch.empty_like(x)
        relu_kernel[(triton.cdiv(x.numel(), 128),)](x, scratch, x.numel(), BLOCK=128)
        return torch.zeros_like(x)
    """))
    unchanged = solution(RELU_KERNEL, module("""
        scratch = torch.empty_like(x)
        relu_kernel[(triton.cdiv(x.numel(), 128),)](x, scratch, x.numel(), BLOCK=128)
        return x
    """))
    filled = solution("""
        @triton.jit
        def fill(out_ptr, value, n, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            tl.store(out_ptr + offs, value, mask=offs < n)
    """, module("""
        out = torch.empty_like(x)
        fill[(triton.cdiv(x.numel(), 128),)](out, 0.5, x.numel(), BLOCK=128)
        return out
    """))
    for code, words in ((unwritten, "no launched kernel writes"), (unchanged, "input x unchanged"),
                        (filled, "fill fills with values it loads nothing for")):
        verdict = check(code)
        assert verdict.reason == "not_a_kernel:constant_output"
        assert words in verdict.detail


def test_an_output_computed_only_from_parameters_is_a_constant_output():
    for forward in ("""
        scratch = triton_relu(x)
        return self.gain * 2.0
    """, """
        out = torch.zeros_like(x)
        scratch = triton_relu(x)
        out += self.gain
        return out
    """):
        code = solution(RELU_KERNEL, LAUNCH_HELPER, module(forward, init="self.gain = nn.Parameter(torch.ones(64))"))
        verdict = check(code)
        assert verdict.reason == "not_a_kernel:constant_output"
        assert "only from the module's parameters" in verdict.detail
    # A registered buffer that a kernel writes holds the kernel's output.
    written = solution(RELU_KERNEL, module("""
        relu_kernel[(triton.cdiv(x.numel(), 128),)](x, self.out, x.numel(), BLOCK=128)
        return self.out.view_as(x)
    """, init='self.register_buffer("out", torch.empty(64 * 64))'))
    assert check(written).flags == ()
    assert check(written).reject is None


def test_a_long_chain_of_temporaries_from_load_to_store_still_stores_data():
    steps = "\n".join(f"    t{i + 1} = t{i} * 0.5 + 1.0" for i in range(12))
    code = solution(
        "@triton.jit\ndef chain(x_ptr, y_ptr, n, BLOCK: tl.constexpr):\n"
        "    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)\n"
        "    t0 = tl.load(x_ptr + offs, mask=offs < n)\n" + steps + "\n"
        "    tl.store(y_ptr + offs, t12, mask=offs < n)\n",
        module("""
            y = torch.empty_like(x)
            chain[(triton.cdiv(x.numel(), 128),)](x, y, x.numel(), BLOCK=128)
            return y
        """))
    assert check(code).reject is None


def test_a_kernel_writing_its_input_in_place_is_not_a_constant_output():
    code = solution("""
        @triton.jit
        def relu_inplace(x_ptr, n, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            x = tl.load(x_ptr + offs, mask=offs < n)
            tl.store(x_ptr + offs, tl.maximum(x, 0.0), mask=offs < n)
    """, module("""
        relu_inplace[(triton.cdiv(x.numel(), 128),)](x, x.numel(), BLOCK=128)
        return x
    """))
    assert check(code).reject is None


# --- inputs it must decide -----------------------------------------------------------------------


def test_a_syntax_error_is_unparsable_with_the_error():
    verdict = check(CLEAN + "\ndef broken(:\n    pass\n")
    assert verdict.reason == "not_a_kernel:unparsable"
    assert "SyntaxError" in verdict.detail


def test_null_bytes_are_unparsable():
    verdict = check(CLEAN.replace("return triton_relu(x)", "return triton_relu(x)\x00"))
    assert verdict.reject == "unparsable"
    assert "null bytes" in verdict.detail


def test_nesting_too_deep_for_the_parser_is_unparsable():
    verdict = check(CLEAN + "\ny = " + "(" * 5000 + "1" + ")" * 5000 + "\n")
    assert verdict.reject == "unparsable"


def test_deep_but_parsable_expressions_are_decided_without_raising():
    chain = " + ".join(["x"] * 20_000)
    code = solution(RELU_KERNEL, LAUNCH_HELPER, module(f"y = {chain}\nreturn triton_relu(y)"))
    verdict = check(code)
    assert verdict.reject is None or verdict.reject == "unparsable"
    nested = solution(RELU_KERNEL, LAUNCH_HELPER, module("return triton_relu(x)")) + "\n".join(
        "    " * i + f"if {i}:" for i in range(90)) + "\n" + "    " * 90 + "pass\n"
    assert check(nested).reject in (None, "unparsable")


def test_a_huge_solution_is_decided_without_being_read():
    verdict = check(CLEAN + "#" * (MAX_SOLUTION_CHARS + 1))
    assert verdict.reject == "unparsable"
    assert "limit" in verdict.detail


def test_odd_inputs_are_decided():
    assert check("").reject == "no_triton"
    assert screen(None, REF_RELU).reject == "unparsable"  # type: ignore[arg-type]
    assert check(CLEAN, "").reject is None  # no reference: still screened
    assert check(CLEAN, "def broken(:").reject is None


def test_a_shared_parse_gives_the_same_verdict():
    tree = ast.parse(CLEAN)
    reference_tree = ast.parse(REF_RELU)
    assert screen(CLEAN, REF_RELU, solution_tree=tree, reference_tree=reference_tree) == screen(CLEAN, REF_RELU)
    assert screen("", REF_RELU, solution_tree=tree) == screen(CLEAN, REF_RELU)


def test_a_walk_stopped_by_its_budget_says_so():
    set_up = "\n".join(f"self.layer{i} = nn.Linear(4, 4)" for i in range(12_000))
    tree = ast.parse(solution(RELU_KERNEL, LAUNCH_HELPER, module("return triton_relu(x)", init=set_up)))
    verdict = screen("", REF_RELU, solution_tree=tree)
    assert verdict.reject is None
    assert "stopped at its limits" in verdict.detail


def test_a_reference_tree_without_its_text_is_read():
    assert screen(EXTRA_BIAS, "", reference_tree=ast.parse(REF_CONV)).reject == "torch_computes_kernel_copies"
    assert screen(EXTRA_BIAS, "").reject is None  # no reference: nothing says the bias is extra


def test_recursive_helpers_are_decided():
    code = solution(RELU_KERNEL, LAUNCH_HELPER, """
        def ping(x, n):
            return pong(x, n - 1) if n else triton_relu(x)

        def pong(x, n):
            return ping(x, n)
    """, module("return ping(x, x.dim())"))
    assert check(code).reject is None


def test_the_screen_never_executes_the_code(tmp_path):
    marker = tmp_path / "ran"
    code = solution(f"open({str(marker)!r}, 'w').write('x')\nraise SystemExit(3)\n", RELU_KERNEL, LAUNCH_HELPER,
                    module(f"open({str(marker)!r}, 'w')\nreturn triton_relu(x)"))
    verdict = check(code, f"open({str(marker)!r}, 'w')\n" + REF_RELU)
    assert verdict.reject is None
    assert not marker.exists()
