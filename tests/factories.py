"""Hand-made rows in the source schema, for tests that need exact control over each row."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from kernelbook_lib import schema
from kernelbook_lib.testing.llm_server import LLMTestServer

MODULE = """import torch
import torch.nn as nn


class {name}(nn.Module):
    def forward(self, x):
        return torch.relu(x) * {k}


def get_inputs():
    return [torch.rand([4, 4])]


def get_init_inputs():
    return [[], {{}}]
"""

SOLUTION = """```python
import torch
import triton
import triton.language as tl


@triton.jit
def scale_relu_kernel(x_ptr, out_ptr, n_elements, BLOCK_SIZE: tl.constexpr):
    pid = tl.program_id(0)
    offsets = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements
    x = tl.load(x_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, tl.maximum(x, 0.0), mask=mask)
```"""


def row(
    example_id: int | None = 0,
    *,
    name: str = "Scale",
    k: int | None = None,
    reward: float | None = 0.9,
    code: str | None = None,
    content: str | None = None,
    completion: list | None = None,
) -> dict:
    """One source row; ``k`` makes a distinct module (defaults to ``example_id``)."""
    python_code = code if code is not None else MODULE.format(name=name, k=k if k is not None else example_id)
    if completion is None:
        text = content if content is not None else f"Here is the kernel.\n<answer>\n{SOLUTION}\n</answer>"
        completion = [{"role": "assistant", "content": text, "reasoning": "think"}]
    return {
        "example_id": example_id,
        "prompt": [{"role": "user", "content": f"Convert {name} to Triton."}],
        "completion": completion,
        "task": "default",
        "reward": reward,
        "generation_ms": 1.0,
        "scoring_ms": 1.0,
        "total_ms": 2.0,
        "info": {"module_name": name, "python_code": python_code, "triton_code": "# inductor"},
        "answer": "",
        "speedup_reward": 0.5,
        "num_turns": 1,
        "oai_tools": None,
    }


def write(rows: list[dict], path: Path) -> Path:
    """Write rows as parquet with exactly the source schema."""
    pq.write_table(pa.Table.from_pylist(rows, schema=schema.SOURCE_ARROW_SCHEMA), path)
    return path


def frame(rows: list[dict]) -> pl.DataFrame:
    return pl.from_arrow(pa.Table.from_pylist(rows, schema=schema.SOURCE_ARROW_SCHEMA))


@contextmanager
def loopback_llm(monkeypatch, cache_dir: Path, key: str) -> Iterator[LLMTestServer]:
    """A loopback OpenAI-compatible server, with the settings pointing at it (fast retries,
    a fresh cache). For flow tests of the LLM stages."""
    with LLMTestServer(latency=0.02, api_key=key) as server:
        for name, value in {
            "LLM_BASE_URL": server.base_url,
            "PRIME_API_KEY": key,
            "LLM_RETRIES": "1",
            "LLM_RETRY_BACKOFF_S": "0",
            "KERNELBOOK_CACHE_DIR": str(cache_dir),
        }.items():
            monkeypatch.setenv(name, value)
        yield server
