"""Benchmark: the near-duplicate families stage on 100,000 distinct synthetic modules.

The modules come from ``tests.fixtures.fake_data.near_duplicate_modules``: random operations
(5-14 steps of 50+ kinds), about 70 % of the modules written 2-6 ways each (another class name,
docstring and comments, ``super(Cls, self)``, renamed arguments and locals, extra imports, other
constants and shapes, and for some a small edit: an extra ``.contiguous()``, an unused parameter,
an explicit default, a step written inline), the rest written once. The stage
(``kernelbook_lib.stages.assign_families``) runs in a fresh process on the modules read from
parquet; this prints its wall time, peak RSS (the process, and the largest normalisation
worker), the candidate pairs compared, and pairwise precision and recall against the known
families.

    uv run python benchmarks/neardup.py [--modules 100000] [--workers N] [--threshold 0.7]
    uv run python benchmarks/neardup.py --calibration   # precision/recall of the calibration set per threshold
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pair_counts(truth: list[int], predicted: list[str]) -> tuple[float, float]:
    """Pairwise precision and recall of ``predicted`` against ``truth`` (pairs of modules put
    in one family), from the contingency counts (no loop over pairs)."""
    def pairs(n: int) -> int:
        return n * (n - 1) // 2

    both = sum(pairs(n) for n in Counter(zip(truth, predicted)).values())
    true_pairs = sum(pairs(n) for n in Counter(truth).values())
    predicted_pairs = sum(pairs(n) for n in Counter(predicted).values())
    return (both / predicted_pairs if predicted_pairs else 1.0), (both / true_pairs if true_pairs else 1.0)


def run_stage(path: str, threshold: float, workers: int | None) -> None:
    """The measured process: read the modules, run the stage, print the figures as JSON."""
    import polars as pl

    from kernelbook_lib import schema, stages

    frame = pl.read_parquet(path)
    import ast

    from kernelbook_lib import neardup

    sample = frame.get_column(schema.PYTHON_CODE).head(2000).to_list()
    cpu = time.process_time()
    for code in sample:
        ast.parse(code)
    parse_cpu = time.process_time() - cpu
    cpu = time.process_time()
    for code in sample:
        neardup.normalize(code)
    parse_share = parse_cpu / (time.process_time() - cpu)
    cpu_before = time.process_time()
    started = time.perf_counter()
    result = stages.assign_families(frame.select("problem_id", schema.PYTHON_CODE), True, threshold, workers)
    wall = time.perf_counter() - started
    stage_cpu = time.process_time() - cpu_before
    predicted = result.result.frame.get_column("family_id").to_list()
    precision, recall = pair_counts(frame.get_column("label").to_list(), predicted)
    print(json.dumps({
        "wall_s": wall, "precision": precision, "recall": recall, "near_dup": result.near_dup, "timings": result.timings,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cpu_s": stage_cpu, "parse_share": parse_share,
    }))  # fmt: skip


def calibration() -> None:
    from kernelbook_lib import neardup
    from tests.fixtures.neardup_calibration import calibration_set, pair_scores

    data = calibration_set()
    labels = [label for label, _ in data]
    codes = [code for _, code in data]
    keys = [f"c{i:04d}" for i in range(len(codes))]
    print(f"calibration set: {len(codes)} modules, {len(set(labels))} operations "
          f"(tests/fixtures/neardup_calibration.py); {neardup.NORMALIZATION_VERSION}")
    print(f"{'threshold':>9} {'precision':>9} {'recall':>7} {'families':>8}")
    for threshold in (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95):
        families = neardup.group_families(keys, codes, threshold, workers=1).family_of
        precision, recall, _, _ = pair_scores(labels, families)
        mark = "  <- default" if threshold == neardup.DEFAULT_NEAR_DUP_THRESHOLD else ""
        print(f"{threshold:>9} {precision:>9.3f} {recall:>7.3f} {len(set(families)):>8}{mark}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=None, help="default: the library's")
    parser.add_argument("--workers", type=int, default=None, help="normalisation processes (default: every core)")
    parser.add_argument("--calibration", action="store_true", help="print the calibration table and exit")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # the measured child process
    args = parser.parse_args()

    from kernelbook_lib import neardup

    threshold = args.threshold if args.threshold is not None else neardup.DEFAULT_NEAR_DUP_THRESHOLD
    if args.run:
        run_stage(args.run, threshold, args.workers)
        return
    if args.calibration:
        calibration()
        return

    import polars as pl

    from kernelbook_lib import schema
    from kernelbook_lib.text import problem_id
    from tests.fixtures.fake_data import near_duplicate_modules

    work = Path(tempfile.mkdtemp(prefix="kernelbook-neardup-"))
    try:
        started = time.perf_counter()
        codes, labels = near_duplicate_modules(args.modules, args.seed)
        path = work / "modules.parquet"
        pl.DataFrame({"problem_id": [problem_id(c) for c in codes], schema.PYTHON_CODE: codes, "label": labels}).write_parquet(path)
        sizes = Counter(labels)
        print(f"generated {len(codes):,} distinct modules (mean {sum(map(len, codes)) / len(codes):,.0f} characters) of "
              f"{len(sizes):,} known families ({sum(n for n in sizes.values() if n > 1):,} modules in families of 2-6) "
              f"in {time.perf_counter() - started:.1f} s")
        load = os.getloadavg()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--run", str(path), "--threshold", str(threshold)]
        if args.workers is not None:
            cmd += ["--workers", str(args.workers)]
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        process_wall = time.perf_counter() - started
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr)
            raise SystemExit("the measured process failed")
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
        nd = figures["near_dup"]
        print(f"families stage: {figures['wall_s']:.1f} s wall (normalisation {figures['timings']['normalize_s']:.1f} s, "
              f"{figures['timings']['workers']} worker process(es); whole process {process_wall:.1f} s "
              f"with imports and reading); load average before {load[0]:.1f}")
        worker_cpu = figures["timings"].get("worker_cpu_s") or 0.0
        print(f"CPU: {figures['cpu_s']:.1f} s in the stage's process + {worker_cpu:.1f} s "
              f"in the workers ({1e3 * (figures['timings']['worker_cpu_s'] or 0) / len(codes):.2f} ms of normalisation per module; "
              f"ast.parse is {figures['parse_share']:.0%} of it, on a sample of 2,000 modules)")
        print(f"peak RSS: {figures['peak_rss_mib']:,.0f} MiB (the stage's process), "
              f"{figures['timings']['worker_peak_rss_mib'] or 0:,.0f} MiB (largest normalisation worker)")
        print(f"{nd['distinct_forms']:,} distinct normalised forms, {nd['pairs_compared']:,} candidate pairs compared "
              f"({nd['pairs_compared_exactly']:,} exactly), {nd['pairs_confirmed']:,} confirmed; {nd['families']:,} families, "
              f"{nd['problems_in_shared_families']:,} "
              f"modules in a family of more than one, the largest has {nd['largest_family']}")
        print(f"against the known families: precision {figures['precision']:.4f}, recall {figures['recall']:.4f} "
              f"(threshold {threshold}, {nd['normalization']})")
        print("targets on 2 cores: under 60 s and under 2 GiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
