"""The offline static judge: rubric bands for difficulty, style ordering, robustness, determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest

from kernelbook_lib.static_judge import (
    STATIC_JUDGE_NAME,
    ModuleFeatures,
    StaticVerdict,
    analyze_module,
    difficulty_of,
    judge_static,
    style_of,
)

HEADER = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n\n\n"
FOOTER = """

def get_inputs():
    return [torch.rand([4, 4, 4, 4])]


def get_init_inputs():
    return [[], {}]
"""


def module(body: str) -> str:
    return HEADER + body.strip("\n") + "\n" + FOOTER


# --- PyTorch modules, one or more per rubric band -------------------------------------------

IDENTITY = module("""
class Identity(nn.Module):
    def forward(self, x):
        return x
""")

FLATTEN = module("""
class Flatten(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        b, c, h, w = x.size()
        return x.contiguous().view(b, c * h * w).clone()
""")

RELU = module("""
class ReLUModule(nn.Module):
    def forward(self, x):
        return F.relu(x)
""")

ADD = module("""
class AddModule(nn.Module):
    def forward(self, x, y):
        return x + y
""")

MISH_CLAMP = module("""
class MishClamp(nn.Module):
    def __init__(self, low=-1.0, high=1.0):
        super().__init__()
        self.low = low
        self.high = high

    def forward(self, x):
        x = x * torch.tanh(F.softplus(x))
        return torch.clamp(x, self.low, self.high)
""")

SUM_DIM = module("""
class SumDim(nn.Module):
    def forward(self, x):
        return torch.sum(x, dim=1)
""")

L2_NORMALIZE = module("""
class L2Norm(nn.Module):
    def __init__(self, eps=1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return x / (x.norm(p=2, dim=1, keepdim=True) + self.eps)
""")

MSE = module("""
class MyMSE(nn.Module):
    def forward(self, pred, target):
        return ((pred - target) ** 2).mean()
""")

SOFTMAX = module("""
class Softmax(nn.Module):
    def forward(self, x):
        return F.softmax(x, dim=-1)
""")

LAYERNORM = module("""
class Norm(nn.Module):
    def __init__(self, dim=4):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(x)
""")

MLP = module("""
class MLP(nn.Module):
    def __init__(self, d_in=4, d_hidden=16, d_out=4):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(d_hidden, d_out)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
""")

CROSS_ENTROPY = module("""
class CELoss(nn.Module):
    def forward(self, logits, target):
        return F.cross_entropy(logits, target)
""")

CONV = module("""
class ConvReLU(nn.Module):
    def __init__(self, cin=4, cout=8):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=3, padding=1)

    def forward(self, x):
        return F.relu(self.conv(x))
""")

CONV_BN_POOL = module("""
class ConvBlock(nn.Module):
    def __init__(self, cin=4, cout=8):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(F.relu(self.bn(self.conv(x))))
""")

SELF_ATTENTION = module("""
class SelfAttention(nn.Module):
    def __init__(self, dim=4, heads=2):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        attn = torch.softmax(scores, dim=-1)
        return torch.matmul(attn, v)
""")

SDPA = module("""
class SDPA(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)
""")

MHA = module("""
class MHA(nn.Module):
    def __init__(self, dim=4):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)

    def forward(self, x):
        out, _ = self.attn(x, x, x)
        return out
""")

RESNET = module("""
def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = self.shortcut(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return F.relu(out)


class ResNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.pool(x), 1))
""")

SINGLE_BASIC_BLOCK = module("""
class BasicBlock(nn.Module):
    def __init__(self, c=4):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)
""")

TRANSFORMER_BLOCK = module("""
class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * (C // self.heads) ** -0.5
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Block(nn.Module):
    def __init__(self, dim=4, heads=2, mlp_ratio=4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x
""")

TRANSFORMER_STACK = module("""
class Encoder(nn.Module):
    def __init__(self, d_model=8, nhead=2, num_layers=6):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward=32)
        self.encoder = nn.TransformerEncoder(layer, num_layers=num_layers)
        self.head = nn.Linear(d_model, 4)

    def forward(self, x):
        return self.head(self.encoder(x))
""")

VGG = module("""
cfg = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M']


def make_layers(in_channels=3):
    layers = []
    for v in [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M']:
        if v == 'M':
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        else:
            layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = make_layers()
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))
""")

BANDS = {
    "identity": (IDENTITY, {0}),
    "flatten": (FLATTEN, {0}),
    "relu": (RELU, {1}),
    "add": (ADD, {1}),
    "mish_clamp": (MISH_CLAMP, {2}),
    "sum_dim": (SUM_DIM, {3}),
    "l2_normalize": (L2_NORMALIZE, {4}),
    "mse": (MSE, {4}),
    "softmax": (SOFTMAX, {5}),
    "layernorm": (LAYERNORM, {5}),
    "mlp": (MLP, {6}),
    "cross_entropy": (CROSS_ENTROPY, {6}),
    "conv": (CONV, {7}),
    "conv_bn_pool": (CONV_BN_POOL, {8}),
    "self_attention": (SELF_ATTENTION, {8}),
    "sdpa": (SDPA, {7}),
    "mha": (MHA, {8}),
    "single_basic_block": (SINGLE_BASIC_BLOCK, {7, 8}),
    "resnet": (RESNET, {10}),
    "transformer_block": (TRANSFORMER_BLOCK, {9}),
    "transformer_stack": (TRANSFORMER_STACK, {10}),
    "vgg": (VGG, {9, 10}),
}


@pytest.mark.parametrize("name", sorted(BANDS))
def test_difficulty_lands_in_the_rubric_band(name: str) -> None:
    code, expected = BANDS[name]
    features = analyze_module(code)
    assert features.parsed, features.parse_error
    score, rationale = difficulty_of(features)
    assert score in expected, f"{name}: {score} not in {sorted(expected)}: {rationale}"
    band = {0: "trivial", 1: "elementwise", 2: "elementwise", 3: "reduction", 4: "reduction", 5: "moderate",
            6: "moderate", 7: "complex", 8: "complex", 9: "architecture", 10: "architecture"}[score]
    assert rationale.startswith(band)


def test_difficulty_rationale_names_the_deciding_features() -> None:
    _, rationale = difficulty_of(analyze_module(RESNET))
    assert "conv2d" in rationale
    assert "stacked residual blocks" in rationale
    assert "in ResNet" in rationale  # the top-level unit, with its blocks multiplied out
    features = analyze_module(RESNET)
    # stem + 4 blocks x (2 convs + the conditional downsample conv, counted statically)
    assert features.conv_layers == 13
    assert features.residual_blocks == 4


def test_setup_code_and_get_inputs_do_not_count() -> None:
    code = module("""
class Scale(nn.Module):
    def __init__(self, n=4):
        super().__init__()
        self.register_buffer("w", torch.exp(torch.arange(n) * 2.0).softmax(0))

    def forward(self, x):
        return x
""")
    assert difficulty_of(analyze_module(code))[0] == 0


def test_unparseable_module_is_scored_from_its_text() -> None:
    broken = HEADER + "class M(nn.Module):\n    def forward(self, x)\n        return F.conv2d(x, self.w)\n"
    features = analyze_module(broken)
    assert not features.parsed
    score, rationale = difficulty_of(features)
    assert score == 7
    assert "does not parse" in rationale and "SyntaxError" in rationale


# --- Triton solutions -----------------------------------------------------------------------

GOOD_SOLUTION = '''```python
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.autotune(
    configs=[triton.Config({"BLOCK_SIZE": 1024}, num_warps=4), triton.Config({"BLOCK_SIZE": 2048}, num_warps=8)],
    key=["n_elements"],
)
@triton.jit
def mish_kernel(input_ptr, output_ptr, n_elements, BLOCK_SIZE: tl.constexpr):
    """Mish activation, x * tanh(softplus(x)), one block of elements per program."""
    pid = tl.program_id(axis=0)
    offsets = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements  # the last block may be partial
    values = tl.load(input_ptr + offsets, mask=mask, other=0.0)
    # softplus, written to stay stable for large inputs
    softplus = tl.where(values > 20.0, values, tl.log(1.0 + tl.exp(values)))
    exp_two = tl.exp(2.0 * softplus)
    result = values * (exp_two - 1.0) / (exp_two + 1.0)
    tl.store(output_ptr + offsets, result, mask=mask)


def mish(inputs: torch.Tensor) -> torch.Tensor:
    """Launch the kernel on a contiguous copy of ``inputs``."""
    inputs = inputs.contiguous()
    output = torch.empty_like(inputs)
    n_elements = inputs.numel()
    # one program per block; the autotuner picks BLOCK_SIZE
    grid = lambda meta: (triton.cdiv(n_elements, meta["BLOCK_SIZE"]),)
    mish_kernel[grid](inputs, output, n_elements)
    return output


class MishNew(nn.Module):
    """Mish activation backed by a Triton kernel."""

    def forward(self, inputs):
        return mish(inputs)
```'''

MESSY_SOLUTION = '''```python
import torch
import triton
import triton.language as tl

@triton.jit
def k(a, b, c):
    p = tl.program_id(0)
    o = p * 1024 + tl.arange(0, 1024)
    x = tl.load(a + o)
    y = x * tl.sigmoid(x)
    tl.store(b + o, y)

class M(torch.nn.Module):
    def forward(self, x):
        z = torch.empty_like(x)
        n = x.numel()
        k[(n // 1024 + 1,)](x, z, n)
        return z
```'''

INDUCTOR_SOLUTION = '''```python
import torch
import triton
import triton.language as tl
from torch._inductor.runtime.triton_heuristics import grid
from torch._C import _cuda_getCurrentRawStream as get_raw_stream
assert_size_stride = torch._C._dynamo.guards.assert_size_stride
empty_strided_cuda = torch._C._dynamo.guards._empty_strided_cuda


@triton.jit
def triton_poi_fused_relu_0(in_ptr0, out_ptr0, xnumel, XBLOCK: tl.constexpr):
    xoffset = tl.program_id(0) * XBLOCK
    xindex = xoffset + tl.arange(0, XBLOCK)[:]
    xmask = xindex < xnumel
    x0 = xindex
    tmp0 = tl.load(in_ptr0 + x0, xmask)
    tmp1 = tl.full([1], 0, tl.int32)
    tmp2 = triton_helpers.maximum(tmp1, tmp0)
    tl.store(out_ptr0 + x0, tmp2, xmask)


def call(args):
    arg0_1, = args
    args.clear()
    assert_size_stride(arg0_1, (4, 4, 4, 4), (64, 16, 4, 1))
    buf0 = empty_strided_cuda((4, 4, 4, 4), (64, 16, 4, 1), torch.float32)
    triton_poi_fused_relu_0[grid(256)](arg0_1, buf0, 256, XBLOCK=128, num_warps=4, num_stages=1)
    return buf0,


class ReLUNew(torch.nn.Module):
    def forward(self, input_0):
        return call([input_0])[0]
```'''


def test_good_solution_scores_higher_than_a_messy_one() -> None:
    good, good_why = style_of(GOOD_SOLUTION)
    messy, messy_why = style_of(MESSY_SOLUTION)
    inductor, _ = style_of(INDUCTOR_SOLUTION)
    assert good >= 9, good_why
    assert 2 <= messy <= 3, messy_why
    assert messy < inductor < good
    assert "masked loads/stores 2/2" in good_why and "triton.cdiv grid" in good_why
    assert "magic numbers" in messy_why and "masked loads/stores 0/2" in messy_why


def test_style_of_answer_without_fences_matches_fenced() -> None:
    bare = GOOD_SOLUTION.removeprefix("```python\n").removesuffix("```")
    assert style_of(bare) == style_of(GOOD_SOLUTION)


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("", 0),
        ("   \n", 0),
        ("```python\n```", 0),
        ("```python\n@triton.jit\ndef k(x_ptr:\n    pass\n```", 1),
        ("def broken(:\n", 0),
        ("import torch\n\nclass ModelNew(torch.nn.Module):\n    def forward(self, x):\n        return x.relu()\n", 1),
    ],
)
def test_broken_empty_and_kernel_less_solutions_score_0_or_1(answer: str, expected: int) -> None:
    score, rationale = style_of(answer)
    assert score == expected, rationale


def test_unparseable_solution_says_so() -> None:
    score, rationale = style_of("```python\n@triton.jit\ndef k(x_ptr:\n    pass\n```")
    assert score <= 1
    assert "solution does not parse" in rationale


# --- robustness -----------------------------------------------------------------------------

ADVERSARIAL = [
    "",
    " ",
    "\x00",
    "import torch\x00\nclass M(nn.Module): pass",
    "def f(:\n",
    "class M(nn.Module):\n\tdef forward(self, x):\n        return x\n",  # inconsistent indentation
    "(" * 199 + "x" + ")" * 199,  # deepest nesting the tokenizer accepts: a deep AST
    "(" * 250 + "x" + ")" * 250,  # too many nested parentheses
    "y = " + "f(" * 150 + "x" + ")" * 150,
    "x = " + "-" * 100_000 + "x",  # parser stack overflow (MemoryError)
    "x = a" + " + a" * 5_000,  # RecursionError while building the AST
    "def forward(self, x):\n    return x" + " + x" * 1_500 + "\n",  # parses: a 1,500-deep AST
    "x = " + "[" * 180 + "]" * 180,
    "'\\d' + torch.relu(x)",  # invalid escape: a compile-time warning
    "\ufeffimport torch\n",
    "```python\n" + "(" * 199 + "tl.load(x)" + ")" * 199 + "\n```",
    "x = '\ud800'",  # a lone surrogate cannot be encoded for the parser
    "for i in range(" + "9" * 40 + "):\n    x = torch.relu(nn.Conv2d(4, 4, 3)(x))\n",
]


@pytest.mark.parametrize("index", range(len(ADVERSARIAL)))
def test_adversarial_inputs_never_raise(index: int) -> None:
    source = ADVERSARIAL[index]
    features = analyze_module(source)
    assert isinstance(features, ModuleFeatures)
    difficulty, _ = difficulty_of(features)
    style, _ = style_of(source)
    verdict = judge_static(source, source)
    for value in (difficulty, style, verdict.difficulty, verdict.style):
        assert type(value) is int and 0 <= value <= 10
    assert verdict.rationale.startswith(f"difficulty {verdict.difficulty}: ")
    assert f"; style {verdict.style}: " in verdict.rationale


def test_non_string_inputs_never_raise() -> None:
    verdict = judge_static(None, None)  # type: ignore[arg-type]
    assert (verdict.difficulty, verdict.style) == (0, 0)


def test_compile_warnings_do_not_break_parsing_under_warnings_as_errors() -> None:
    code = RELU.replace("return F.relu(x)", "_ = '\\d'\n        return F.relu(x)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        features = analyze_module(code)
    assert features.parsed
    assert difficulty_of(features)[0] == 1


# --- determinism and the verdict ------------------------------------------------------------

def test_verdict_fields_and_repeatability() -> None:
    for code, _ in BANDS.values():
        for answer in (GOOD_SOLUTION, MESSY_SOLUTION, INDUCTOR_SOLUTION, "", "def f(:"):
            first = judge_static(code, answer)
            assert isinstance(first, StaticVerdict)
            assert type(first.difficulty) is int and 0 <= first.difficulty <= 10
            assert type(first.style) is int and 0 <= first.style <= 10
            assert judge_static(code, answer) == first
    assert STATIC_JUDGE_NAME == "static-ast-v1"


_SUBPROCESS = """
import json, sys
from kernelbook_lib.static_judge import judge_static
out = []
for code, answer in json.load(sys.stdin):
    v = judge_static(code, answer)
    out.append([v.difficulty, v.style, v.rationale])
print(json.dumps(out))
"""


@pytest.mark.slow
def test_verdicts_do_not_depend_on_hash_seed() -> None:
    """Set iteration order differs between hash seeds; no verdict or rationale may follow it."""
    pairs = [
        [BANDS[name][0], answer]
        for name in sorted(BANDS)
        for answer in (GOOD_SOLUTION, MESSY_SOLUTION, INDUCTOR_SOLUTION)
    ]
    outputs = []
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", _SUBPROCESS], input=json.dumps(pairs), env=env,
            capture_output=True, text=True, check=True, timeout=120,
        )
        outputs.append(json.loads(result.stdout))
    assert outputs[0] == outputs[1]
    assert outputs[0] == [[v.difficulty, v.style, v.rationale] for v in (judge_static(c, a) for c, a in pairs)]


def _conv_stack(depth: str) -> str:
    return module(f"""
class ConvStack(nn.Module):
    def __init__(self, c=4):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(c, c, 3, padding=1) for _ in range({depth})])

    def forward(self, x):
        for conv in self.convs:
            x = F.relu(conv(x))
        return x
""")


def test_layer_counts_move_the_score_within_and_across_bands() -> None:
    # a literal loop count multiplies constructions: 1 conv -> 7, 2 -> 8, 8 -> an architecture
    shallow = analyze_module(_conv_stack("1"))
    two = analyze_module(_conv_stack("2"))
    deep = analyze_module(_conv_stack("8"))
    assert (shallow.conv_layers, two.conv_layers, deep.conv_layers) == (1, 2, 8)
    assert difficulty_of(shallow)[0] == 7
    assert difficulty_of(two)[0] == 8
    assert difficulty_of(deep)[0] == 9
    # an unknown count is taken as "at least two"
    assert analyze_module(_conv_stack("num_layers")).conv_layers == 2


def test_subclass_of_a_block_inherits_its_layers() -> None:
    code = module("""
class Base(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3)
        self.conv2 = nn.Conv2d(4, 4, 3)


class Child(Base):
    def forward(self, x):
        return self.conv2(self.conv1(x))
""")
    features = analyze_module(code)
    assert features.root == "Child"
    assert features.conv_layers == 2
