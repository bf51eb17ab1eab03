"""Benchmark: `curate` with the static judge on 181,620 rows (10x the real dataset).

Prints wall time, rows/s and peak RSS of the real command (`python -m kernelbook_cli curate
--no-analysis`, the ephemeral Prefect server's start and stop included), with the default task
runner (near-duplicate families on, the default), the same with `--no-near-dup`, and with
`--task-runner dask`, and the ratio of each to a bare polars + `ast` baseline doing the same
minimal work on the same file in the same run (read, filter, find the answer, parse both
sources, keep the best row per problem, write parquet). For the runs with families it prints
what the families stage did (problems, families, its own time from the run's log) and what the
kernel screen did (rows kept clean, flagged and rejected; its own wall time and rows/s). The
analysis (plots of every row) is a separate stage and is timed on its own at the end. The load
average before each run is printed: other work on the machine shows directly in the times.

    uv run python benchmarks/curate_scale.py [--rows 181620] [--keep] [--skip-dask]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASELINE = r'''
import ast, hashlib, sys
import polars as pl
src, dst = sys.argv[1], sys.argv[2]
df = pl.read_parquet(src)
df = df.filter(pl.col("reward") > 0.85)
content = pl.col("completion").list.eval(
    pl.element().filter(pl.element().struct.field("role") == "assistant").struct.field("content")).list.last()
df = df.with_columns(
    content.str.extract(r"(?is).*<answer>(.*?)</answer>", 1).alias("solution"),
    pl.col("info").struct.field("python_code").alias("code"),
).filter(pl.col("solution").is_not_null())
def parses(text):
    try:
        ast.parse(text)
        return 1
    except (SyntaxError, ValueError, RecursionError):
        return 0
codes = {}
scores = []
for code, solution in df.select("code", "solution").iter_rows():
    if code not in codes:
        codes[code] = (parses(code), hashlib.sha256(code.encode()).hexdigest()[:16])
    scores.append(parses(solution.strip().strip("`")))  # the fenced code, as the static judge reads it
df = df.with_columns(pl.Series("ok", scores), pl.Series("pid", [codes[c][1] for c in df["code"]]))
best = df.sort(["ok", "reward"], descending=True).unique(subset=["pid"], keep="first")
df.drop("solution", "code").write_parquet(dst + "/filtered.parquet")
best.drop("solution", "code").write_parquet(dst + "/unique.parquet")
'''


_FAMILIES_TIME = re.compile(r"families: .* pairs compared in ([0-9.]+) s")
_SCREEN_TIME = re.compile(r"screen: ([0-9]+) rows, ([0-9]+) distinct solutions in ([0-9.]+) s \(([0-9,]+) rows/s\)")


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Run a command; return wall seconds, peak RSS in MiB (the process and its waited-for
    children), and its combined output."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        print(output)
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=181_620)
    parser.add_argument("--keep", action="store_true", help="keep the generated data and outputs")
    parser.add_argument("--skip-dask", action="store_true", help="leave out the --task-runner dask run")
    args = parser.parse_args()

    from tests.fixtures.fake_data import write_evals_large

    work = Path(tempfile.mkdtemp(prefix="kernelbook-bench-"))
    try:
        data = work / "evals.parquet"
        start = time.perf_counter()
        write_evals_large(data, args.rows, seed=1)
        print(f"generated {args.rows:,} rows ({data.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - start:.1f} s")

        base_out = work / "baseline"
        base_out.mkdir()
        base_wall, base_rss, _ = run_measured([sys.executable, "-c", BASELINE, str(data), str(base_out)])

        print(f"baseline (polars + ast, same work): {base_wall:6.1f} s, peak RSS {base_rss:6.0f} MiB "
              f"(load average before {os.getloadavg()[0]:.1f})")
        runs = [("default", "families", []), ("default", "no-near-dup", ["--no-near-dup"])]
        if not args.skip_dask:
            runs.append(("dask", "families", []))
        for runner, label, extra in runs:
            out = work / f"out-{runner}-{label}"
            load = os.getloadavg()[0]
            wall, rss, output = run_measured(
                [sys.executable, "-m", "kernelbook_cli", "curate", "--source", str(data), "--judge", "static",
                 "--no-analysis", "--task-runner", runner, "--out", str(out), *extra],
                env=dict(os.environ),
            )
            summary = json.loads((out / "run_summary.json").read_text())
            judged = {s["name"]: s for s in summary["stages"]}["judge"]["rows_in"]
            print(f"curate, static judge, {runner:7} runner, {label:11}: {wall:6.1f} s, peak RSS {rss:6.0f} MiB, "
                  f"{args.rows / wall:,.0f} rows/s ({judged:,} rows judged); ratio to baseline {wall / base_wall:.2f} "
                  f"(target <= 2.0); peak RSS {rss / 1024:.2f} GiB (target < 4 GiB); load average before {load:.1f}")
            near = summary.get("near_dup") or {}
            if near.get("enabled"):
                stage_time = _FAMILIES_TIME.search(output)
                print(f"    families: {near['problems']:,} problems in {near['families']:,} families "
                      f"({near['distinct_forms']:,} distinct normalised forms, {near['pairs_compared']:,} pairs compared), "
                      f"stage {stage_time.group(1) if stage_time else '?'} s")
            screened = summary.get("screen") or {}
            screen_time = _SCREEN_TIME.search(output)
            if screened:
                print(f"    screen: {screened['rows']:,} rows, {screened['distinct_solutions']:,} distinct solutions, "
                      f"{screened['kept_clean']:,} clean, {screened['kept_flagged']:,} flagged, "
                      f"{sum(screened['rejected'].values()):,} rejected; stage "
                      + (f"{screen_time.group(3)} s ({screen_time.group(4)} rows/s)" if screen_time else "? s"))
            if "ERROR" in output or "Traceback" in output:
                print("note: the run printed an ERROR line or a traceback")
        wall, rss, _ = run_measured([sys.executable, "-m", "kernelbook_cli", "analyze", "--input", str(work / "out-default-families")])
        print(f"analysis of the same output (statistics, 3 plots, report): {wall:6.1f} s, peak RSS {rss:6.0f} MiB")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
