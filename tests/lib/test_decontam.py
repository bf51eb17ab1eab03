"""Decontamination against evaluation benchmarks (library level, no Prefect): reading a benchmark
source, and the ``decontaminate`` stage with exact and disguised copies and an unrelated item."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from kernelbook_lib import decontam, loading, stages
from kernelbook_lib.errors import SchemaError, SourceUnavailableError
from tests.fixtures import fake_data
from tests.lib.test_neardup import SWISH, SWISH_DISGUISED

SOFTMAX = '''import torch
import torch.nn as nn


class Model(nn.Module):
    """Softmax over the last dimension."""

    def __init__(self):
        super(Model, self).__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=-1)


batch_size = 16
dim = 16384


def get_inputs():
    x = torch.randn(batch_size, dim)
    return [x]


def get_init_inputs():
    return []
'''

UNRELATED = '''import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size):
        super().__init__()
        self.conv_transpose = nn.ConvTranspose3d(in_channels, out_channels, kernel_size, stride=2)
        self.norm = nn.GroupNorm(8, out_channels)

    def forward(self, x):
        x = self.conv_transpose(x)
        x = torch.nn.functional.hardswish(self.norm(x))
        return torch.logsumexp(x, dim=1, keepdim=True)


def get_inputs():
    return [torch.randn(4, 8, 8, 16, 16)]


def get_init_inputs():
    return [8, 32, 3]
'''


def kernelbench(path: Path, items: list[tuple[int, int, str, str]]) -> Path:
    """A KernelBench-shaped benchmark file: ``code``, ``level``, ``name``, ``problem_id``."""
    pl.DataFrame(
        {"code": [c for *_, c in items], "level": [lv for lv, *_ in items], "name": [n for _, _, n, _ in items],
         "problem_id": [p for _, p, _, _ in items]}
    ).write_parquet(path)
    return path


def prepared(tmp_path: Path, rows: list[dict]) -> pl.DataFrame:
    path = fake_data.write_rows(rows, tmp_path / "src.parquet")
    return loading.prepare(loading.read_source(str(path))).frame


def test_exact_and_disguised_copies_are_removed_and_an_unrelated_item_removes_nothing(tmp_path):
    softmax_disguised = (
        SOFTMAX.replace("class Model", "class RowSoftmax").replace("super(Model, self)", "super()")
        .replace("x: torch.Tensor", "logits").replace("(x, dim=-1)", "(logits, dim=-1)")
        .replace("batch_size = 16", "batch_size = 128").replace('"""Softmax over the last dimension."""', "# softmax")
    )  # fmt: skip
    rows = [
        fake_data.row(0, name="Model", code=SOFTMAX),  # an exact copy of a benchmark item
        fake_data.row(1, name="RowSoftmax", code=softmax_disguised),  # a disguised copy
        fake_data.row(2, name="RowSoftmax", code=softmax_disguised),  # its second rollout
        fake_data.row(3, name="Swish", code=SWISH),  # not in the benchmark
        fake_data.row(4, name="Scale", k=3),
    ]
    frame = stages.assign_families(prepared(tmp_path, rows)).result.frame
    bench = decontam.read_benchmark(str(kernelbench(tmp_path / "kb.parquet", [
        (1, 23, "23_Softmax.py", SOFTMAX), (3, 41, "41_ConvTranspose3d_GroupNorm.py", UNRELATED)])))
    assert bench.code_column == "code" and len(bench.codes) == 2
    result = decontam.decontaminate(frame, [bench])
    report = result.result.report
    assert report.name == "decontaminate" and report.rows_in == 5 and report.rows_out == 2
    assert report.dropped == {"contaminated": 3}
    ledger = result.result.rejected.sort("source_index").to_dicts()
    assert [r["source_index"] for r in ledger] == [0, 1, 2]
    for line in ledger:
        assert line["stage"] == "decontaminate" and line["reason"] == "contaminated"
        assert "kb.parquet item level=1, problem_id=23, name=23_Softmax.py" in line["detail"]
    assert "similarity 1.00" in ledger[0]["detail"]
    assert result.result.frame.get_column("example_id").to_list() == [3, 4]
    [entry] = result.report["benchmarks"]
    assert entry == {"source": "kb.parquet", "code_column": "code", "items": 2, "rows_without_code": 0,
                     "problems_removed": 2, "rows_removed": 3}

    # A benchmark of unrelated items only removes nothing.
    unrelated = decontam.read_benchmark(str(kernelbench(tmp_path / "other.parquet", [(3, 41, "41_x.py", UNRELATED)])))
    clean = decontam.decontaminate(frame, [unrelated])
    assert clean.result.report.dropped == {} and clean.result.frame.height == 5
    assert clean.report["benchmarks"][0]["rows_removed"] == 0


def test_reused_forms_give_the_same_result_and_each_row_counts_for_its_first_benchmark(tmp_path):
    rows = [fake_data.row(0, name="Swish", code=SWISH), fake_data.row(1, name="SwishModule", code=SWISH_DISGUISED)]
    family_stage = stages.assign_families(prepared(tmp_path, rows))
    first = decontam.read_benchmark(str(kernelbench(tmp_path / "a.parquet", [(1, 1, "swish", SWISH)])))
    second = decontam.read_benchmark(str(kernelbench(tmp_path / "b.parquet", [(1, 7, "swish-again", SWISH_DISGUISED)])))
    fresh = decontam.decontaminate(family_stage.result.frame, [first, second])
    reused = decontam.decontaminate(family_stage.result.frame, [first, second], forms=family_stage.forms)
    assert fresh.result.rejected.equals(reused.result.rejected)
    assert [b["rows_removed"] for b in fresh.report["benchmarks"]] == [2, 0]


def test_a_folder_of_split_files_and_the_eval_schema_are_read(tmp_path):
    folder = tmp_path / "bench" / "data"
    folder.mkdir(parents=True)
    kernelbench(folder / "level_1-00000-of-00001.parquet", [(1, 1, "a.py", SWISH)])
    kernelbench(folder / "level_2-00000-of-00001.parquet", [(2, 1, "b.py", SOFTMAX), (2, 2, "c.py", "  ")])
    bench = decontam.read_benchmark(str(tmp_path / "bench"))
    assert bench.labels == ["level=1, problem_id=1, name=a.py", "level=2, problem_id=1, name=b.py"]
    assert bench.rows_without_code == 1 and bench.name == "bench"
    evals = fake_data.write_rows([fake_data.row(0, name="Swish", code=SWISH)], tmp_path / "evals.parquet")
    as_eval = decontam.read_benchmark(str(evals))
    assert as_eval.code_column == "info.python_code" and as_eval.labels == ["info.module_name=Swish"]
    rows_only = tmp_path / "plain.jsonl"
    pl.DataFrame({"pytorch_code": [SWISH]}).write_ndjson(rows_only)
    assert decontam.read_benchmark(str(rows_only)).labels == ["row 0"]


def test_a_source_without_a_code_column_is_one_line_that_lists_the_columns(tmp_path):
    path = tmp_path / "nocode.parquet"
    pl.DataFrame({"name": ["x"], "source": ["def f(): pass"], "meta": [{"level": 1, "kind": "a"}]}).write_parquet(path)
    with pytest.raises(SchemaError) as err:
        decontam.read_benchmark(str(path))
    message = str(err.value)
    assert "\n" not in message and "nocode.parquet has no code column" in message
    assert "code, python_code, pytorch_code, info.python_code" in message
    assert message.endswith("columns found: name, source, meta.level, meta.kind")


def test_an_unreachable_hub_or_a_wrong_path_is_one_clear_line(tmp_path):
    with pytest.raises(SourceUnavailableError) as err:  # the tests run with HF_HUB_OFFLINE=1
        decontam.read_benchmark("ScalingIntelligence/KernelBench")
    assert "cannot load benchmark 'ScalingIntelligence/KernelBench' from the Hugging Face Hub" in str(err.value)
    assert "--decontaminate" in str(err.value)
    with pytest.raises(SourceUnavailableError, match="--decontaminate .*: no such file or folder"):
        decontam.read_benchmark(str(tmp_path / "missing" / "x.parquet"))
