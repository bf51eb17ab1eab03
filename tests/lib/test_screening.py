"""The screen stage on frames: what it keeps, flags and rejects, the ledger, strict mode, the
report by reward band, and the parse it shares with the static judge. (The decisions on single
solutions are tested in ``test_screen.py``.)"""

from __future__ import annotations

import polars as pl
import pytest

from kernelbook_lib import judging, loading, schema, screening
from kernelbook_lib.summary import format_screen
from tests.fixtures import fake_data

CONV_MODULE = """import torch
import torch.nn as nn


class ConvRelu(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3)

    def forward(self, x):
        return torch.relu(self.conv(x))


def get_inputs():
    return [torch.rand([2, 3, 16, 16])]


def get_init_inputs():
    return [[3, 8], {}]
"""

# A Triton ReLU after a convolution left to PyTorch: a partial conversion.
PARTIAL = """```python
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def relu_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, tl.maximum(tl.load(x_ptr + offs, mask=mask), 0.0), mask=mask)


class ConvReluNew(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3)

    def forward(self, x):
        y = self.conv(x)
        out = torch.empty_like(y)
        n = y.numel()
        relu_kernel[(triton.cdiv(n, 1024),)](y, out, n, BLOCK=1024)
        return out
```"""

# No Triton at all: PyTorch does the work.
PYTORCH_ONLY = """```python
import torch
import torch.nn as nn


class ScaleNew(nn.Module):
    def forward(self, x):
        return torch.relu(x) * 2
```"""


def answer(code: str) -> str:
    return f"Here it is.\n<answer>\n{code}\n</answer>"


def prepared(tmp_path, rows) -> pl.DataFrame:
    path = fake_data.write_rows(rows, tmp_path / "src.parquet")
    return loading.prepare(loading.read_source(str(path))).frame


@pytest.fixture
def frame(tmp_path) -> pl.DataFrame:
    rows = [
        fake_data.row(0, k=2, reward=0.9),  # a clean kernel (the fixture's default solution)
        fake_data.row(1, k=2, reward=1.2),  # the same solution again: screened once
        fake_data.row(2, name="ConvRelu", code=CONV_MODULE, content=answer(PARTIAL), reward=1.7),
        fake_data.row(3, k=3, content=answer(PYTORCH_ONLY), reward=1.8),
    ]
    return prepared(tmp_path, rows)


def test_clean_kernels_are_kept_without_flags_and_non_kernels_go_to_the_ledger(frame):
    stage = screening.screen_rows(frame, "standard")
    result = stage.result
    assert result.report.rows_in == 4 and result.report.rows_out == 3
    kept = dict(zip(result.frame.get_column("example_id").to_list(), result.frame.get_column("kernel_flags").to_list()))
    assert kept[0] == [] and kept[1] == []
    assert kept[2] and kept[2][0].startswith("partial:") and "conv2d" in kept[2][0]
    ledger = result.rejected.row(0, named=True)
    assert ledger["stage"] == "screen" and ledger["example_id"] == 3
    assert ledger["reason"] == "not_a_kernel:no_triton"
    assert ledger["detail"]  # the evidence is recorded, never an empty reason


def test_strict_mode_also_rejects_partial_conversions(frame):
    result = screening.screen_rows(frame, "strict").result
    assert result.report.dropped == {"not_a_kernel:no_triton": 1, "strict:partial": 1}
    assert sorted(result.frame.get_column("example_id").to_list()) == [0, 1]
    strict = result.rejected.filter(pl.col("reason") == "strict:partial").row(0, named=True)
    assert "partial:" in strict["detail"]


def test_the_report_counts_kinds_flags_and_rates_by_reward_band(frame):
    report = screening.screen_rows(frame, "standard").report
    assert report["mode"] == "standard" and report["version"] == screening.SCREEN_VERSION
    assert report["rows"] == 4 and report["kept_clean"] == 2 and report["kept_flagged"] == 1
    assert report["distinct_solutions"] == 3  # rows 0 and 1 share their problem and solution
    assert report["rejected"] == {"not_a_kernel:no_triton": 1}
    assert report["flagged"] == {"partial": 1} and report["partial_ops"].get("conv2d") == 1
    bands = {b["band"]: b for b in report["by_reward_band"]}
    assert set(bands) == {"(0.85, 1.0]", "(1.0, 1.5]", "> 1.5"}  # empty bands are not listed
    assert bands["> 1.5"] == {"band": "> 1.5", "rows": 2, "rejected": 1, "flagged": 1, "rejected_rate": 0.5, "flagged_rate": 0.5}
    assert bands["(0.85, 1.0]"]["rejected_rate"] == 0.0
    line = format_screen(report)
    assert "no_triton 1" in line and "partial 1" in line and "> 1.5: 50% rejected" in line


def test_each_distinct_solution_is_screened_once(frame, monkeypatch):
    calls = []
    real = screening.screen

    def counting(code, reference, **trees):
        calls.append(code)
        return real(code, reference, **trees)

    monkeypatch.setattr(screening, "screen", counting)
    screening.screen_rows(frame, "standard")
    assert len(calls) == 3


def test_the_static_judge_reads_the_screens_parse_and_caps_a_flagged_style(frame):
    screened = screening.screen_rows(frame, "standard", with_style=True).result.frame
    assert {judging.STYLE, judging.STYLE_WHY} <= set(screened.columns)
    verdicts = judging.static_verdicts(screened)
    by_row = dict(zip(verdicts.get_column(schema.ROW).to_list(), verdicts.iter_rows(named=True)))
    # For a clean kernel the shared parse gives the same verdict as the judge's own parse.
    alone = judging.static_verdicts(frame.filter(pl.col("example_id") == 0))
    assert by_row[alone.get_column(schema.ROW)[0]]["style"] == alone.get_column("style")[0]
    flagged = screened.filter(pl.col("example_id") == 2).get_column(schema.ROW)[0]
    assert by_row[flagged]["style"] <= 6
    assert "kernel screen: partial:" in by_row[flagged]["judge_rationale"]


def test_off_marks_rows_as_not_screened(frame):
    marked = screening.mark_unscreened(frame)
    assert marked.height == frame.height
    assert marked.get_column("kernel_flags").null_count() == frame.height


def test_an_unknown_mode_is_a_bug_not_a_silent_pass(frame):
    with pytest.raises(ValueError, match="standard or strict"):
        screening.screen_rows(frame, "off")  # type: ignore[arg-type]


def test_a_process_pool_gives_the_same_decisions(frame, monkeypatch):
    """Many solutions are screened in a process pool (one worker per core): the same rows, flags,
    ledger and report as in this process."""
    alone = screening.screen_rows(frame, "standard", with_style=True, workers=1)
    monkeypatch.setattr(screening, "MIN_SOLUTIONS_FOR_POOL", 1)
    monkeypatch.setattr(screening, "_POOL_CHUNK", 1)  # one reference per task: several tasks
    pooled = screening.screen_rows(frame, "standard", with_style=True, workers=2)
    assert pooled.result.frame.equals(alone.result.frame)
    assert pooled.result.rejected.equals(alone.result.rejected)
    assert pooled.report == alone.report
