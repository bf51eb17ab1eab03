"""The curate flow with each ``--screen`` mode on the bundled sample: what reaches the datasets,
the ledger and the summary."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from flows.curate import curate
from kernelbook_lib.params import CurateParams


def run(out: Path, screen: str) -> dict:
    curate(CurateParams(source="sample", judge="static", out=str(out), analysis=False, screen=screen))
    return json.loads((out / "run_summary.json").read_text())


def ledger(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(prefect_harness, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("screen-modes")
    return {mode: (root / mode, run(root / mode, mode)) for mode in ("standard", "strict", "off")}


def test_off_runs_no_screen_stage_and_leaves_kernel_flags_null(runs):
    out, summary = runs["off"]
    assert "screen" not in [s["name"] for s in summary["stages"]] and summary["screen"] is None
    frame = pl.read_parquet(out / "filtered" / "data" / "*.parquet")
    assert frame.get_column("kernel_flags").null_count() == frame.height
    assert not [r for r in ledger(out) if r["stage"] == "screen"]
    assert "**Kernel screen.** Off" in (out / "filtered" / "README.md").read_text()


def test_standard_rejects_non_kernels_and_keeps_flagged_rows(runs):
    out, summary = runs["standard"]
    off_rows = sum(runs["off"][1]["datasets"]["filtered"].values())
    kept = sum(summary["datasets"]["filtered"].values())
    rejected = [r for r in ledger(out) if r["stage"] == "screen"]
    assert rejected and all(r["reason"].startswith("not_a_kernel:") and r["detail"] for r in rejected)
    assert kept == off_rows - len(rejected)  # only the screen's rejections are missing
    frame = pl.read_parquet(out / "filtered" / "data" / "*.parquet")
    assert frame.get_column("kernel_flags").null_count() == 0
    assert frame.filter(pl.col("kernel_flags").list.len() > 0).height == summary["screen"]["kept_flagged"] > 0


def test_strict_also_rejects_flagged_rows(runs):
    out, summary = runs["strict"]
    standard = runs["standard"][1]
    strict_rejections = [r for r in ledger(out) if r["reason"].startswith("strict:")]
    assert strict_rejections and all(r["stage"] == "screen" for r in strict_rejections)
    frame = pl.read_parquet(out / "filtered" / "data" / "*.parquet")
    families = {f.split(":", 1)[0] for flags in frame.get_column("kernel_flags").to_list() for f in flags}
    assert not families & {"partial", "fallback", "library"}
    assert sum(summary["datasets"]["filtered"].values()) == sum(standard["datasets"]["filtered"].values()) - len(strict_rejections)
