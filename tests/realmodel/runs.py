"""Running the CLI against a real server and reading what it wrote (the realmodel tests)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from kernelbook_cli import app
from kernelbook_lib import prompt_dataset
from tests.fixtures import fake_data

#: What a row that reached the judge and got no verdict is recorded as: the ledger reasons of
#: ``kernelbook_lib.llm.ledger_reason`` (``judge_failed:<kind>``, ``judge_invalid_reply``,
#: ``judge_prompt_too_long``).
JUDGE_FAILURE_PREFIXES = ("judge_failed:", "judge_invalid_reply", "judge_prompt_too_long")
GENERATE_FAILURE_PREFIXES = ("generate_failed:", "generate_invalid_reply", "generate_prompt_too_long")


@dataclass
class Run:
    exit_code: int
    output: str
    out: Path
    wall_s: float

    def json(self, name: str) -> dict:
        return json.loads((self.out / name).read_text())

    def jsonl(self, name: str) -> list[dict]:
        return [json.loads(line) for line in (self.out / name).read_text().splitlines() if line.strip()]

    def stage(self, summary_file: str, name: str) -> dict:
        return {stage["name"]: stage for stage in self.json(summary_file)["stages"]}[name]

    def filtered(self) -> pl.DataFrame:
        return pl.read_parquet(self.out / "filtered" / "data" / "*.parquet")

    def judge_rejections(self) -> list[dict]:
        return [r for r in self.jsonl("rejected.jsonl") if r["stage"] == "judge"]


def invoke(args: list[str], out: Path) -> Run:
    started = time.monotonic()
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    return Run(result.exit_code, result.output, out, time.monotonic() - started)


def curate(out: Path, *extra: str, source: str = "sample") -> Run:
    """``curate --judge llm`` without the screen (every row under ``--limit`` reaches the judge)
    and without the analysis; a run whose every row fails still exits 0 (the tests look at what
    it recorded)."""
    return invoke(["curate", "--source", source, "--judge", "llm", "--screen", "off", "--no-analysis",
                   "--max-judge-failure-rate", "1", *extra], out)


def generate(out: Path, *extra: str, source: str = "sample") -> Run:
    return invoke(["generate-prompts", "--source", source, "--backend", "llm", *extra], out)


def generated(run: Run) -> list[dict]:
    return run.jsonl(prompt_dataset.PROMPTS_FILE)


def generate_rejections(run: Run) -> list[dict]:
    return [r for r in run.jsonl(prompt_dataset.REJECTED_FILE) if r["stage"] == "generate"]


def long_module(min_chars: int) -> str:
    """A valid module whose docstring alone is far more than the model's 8,192 tokens."""
    lines, i = [], 0
    while sum(len(line) + 1 for line in lines) < min_chars:
        lines.append(f"    Note {i}: buffer b{i} holds the running value {i * 7919 % 10007} for channel {i % 13}.")
        i += 1
    doc = "\n".join(lines)
    return f'import torch\nimport torch.nn as nn\n\n\nclass Long(nn.Module):\n    """\n{doc}\n    """\n\n' \
        "    def forward(self, x):\n        return torch.relu(x)\n\n\ndef get_inputs():\n    return [torch.rand([4, 4])]\n\n\n" \
        "def get_init_inputs():\n    return [[], {}]\n"


def overflow_source(tmp: Path) -> Path:
    """One row whose judge prompt is about 30,000 tokens, far over the model's 8,192, but under
    LLM_MAX_PROMPT_CHARS (200,000): it is sent, and the server must refuse it."""
    code = long_module(80_000)
    return fake_data.write_rows([fake_data.row(0, name="Long", code=code, reward=0.95)], tmp / "long.parquet")
