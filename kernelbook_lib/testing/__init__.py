"""Test doubles shared by the tests and the benchmarks (never used by the pipeline itself)."""

from __future__ import annotations

import random

from kernelbook_lib.llm import LLMRequest
from kernelbook_lib.rubric import JUDGE_PROMPT_VERSION, build_judge_messages

_OPS = ("relu", "sigmoid", "tanh", "gelu", "softmax", "layer_norm", "sum", "mean", "matmul", "conv2d")


def synthetic_module(i: int, rng: random.Random) -> tuple[str, str, str]:
    """A (module_name, python_code, solution) triple of realistic size: a PyTorch module of
    ~1.5-4 kB and a Triton answer of ~3-9 kB (the sizes of the real judge inputs). Distinct for
    every ``i``."""
    op = rng.choice(_OPS)
    name = f"Synthetic{op.title().replace('_', '')}{i}"
    layers = "\n".join(f"        self.l{k} = nn.Linear({rng.randint(8, 512)}, {rng.randint(8, 512)})"
                       for k in range(rng.randint(2, 12)))
    body = "\n".join(f"        x = torch.{op}(x) if {k} % 2 else x + {rng.random():.4f}"
                     for k in range(rng.randint(10, 40)))
    python_code = (
        f"import torch\nimport torch.nn as nn\n\n\nclass {name}(nn.Module):\n"
        f"    def __init__(self):\n        super().__init__()\n{layers}\n\n"
        f"    def forward(self, x):\n{body}\n        return x\n\n\n"
        f"def get_inputs():\n    return [torch.rand([{rng.randint(1, 8)}, {rng.randint(4, 64)}, {rng.randint(4, 64)}])]\n\n\n"
        f"def get_init_inputs():\n    return [[], {{}}]  # case {i}\n"
    )
    kernel_lines = "\n".join(
        f"    x{k} = tl.load(in_ptr{k % 3} + offsets, mask=mask, other=0.0)\n"
        f"    y{k} = tl.where(x{k} > 0, x{k} * {rng.random():.5f}, x{k})\n"
        f"    tl.store(out_ptr0 + offsets + {k}, y{k}, mask=mask)"
        for k in range(rng.randint(15, 55))
    )
    solution = (
        "Here is the Triton implementation.\n\n```python\nimport torch\nimport triton\n"
        "import triton.language as tl\n\n\n@triton.jit\n"
        f"def {op}_kernel_{i}(in_ptr0, in_ptr1, in_ptr2, out_ptr0, n_elements, BLOCK: tl.constexpr):\n"
        "    pid = tl.program_id(0)\n    offsets = pid * BLOCK + tl.arange(0, BLOCK)\n"
        f"    mask = offsets < n_elements\n{kernel_lines}\n\n\n"
        f"class {name}New(torch.nn.Module):\n    def forward(self, x):\n        out = torch.empty_like(x)\n"
        f"        grid = (triton.cdiv(x.numel(), 1024),)\n        {op}_kernel_{i}[grid](x, x, x, out, x.numel(), BLOCK=1024)\n"
        "        return out\n```\n"
    )
    return name, python_code, solution


def synthetic_judge_requests(n: int, *, model: str = "test/judge-model", seed: int = 0) -> list[LLMRequest]:
    """``n`` distinct judge requests built with the real prompt from synthetic modules."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        name, code, solution = synthetic_module(i, rng)
        out.append(LLMRequest.build(model=model, prompt_version=JUDGE_PROMPT_VERSION, purpose="judge",
                                    messages=build_judge_messages(name, code, solution)))
    return out
