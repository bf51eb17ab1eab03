"""Benchmark: the generate-prompts flow, template backend at KernelBook scale and LLM backend.

1. **Template backend over 18,162 modules** (the size of ``GPUMODE/KernelBook``'s train split;
   synthetic KernelBook-schema rows from ``tests.fixtures.fake_data``): wall time and rows/s of
   the whole flow in a fresh process (ephemeral Prefect server, reading, load checks, dedupe,
   template, writing every output), and of the library stages alone (no Prefect).
2. **LLM backend efficiency**, measured as in ``benchmarks/llm_granularity.py``: N distinct
   problems against the loopback server (a child process, 1.0 s latency) at concurrency C;
   ``efficiency = (calls x latency / concurrency) / wall`` where wall is the LLM stage's own
   wall time (from its accounting), plus the flow's total wall. With ``--judge`` the same number of
   judge requests goes through the same ``run_llm_requests`` in the same way, for comparison.

    uv run python benchmarks/prompt_gen.py [--rows 18162] [--calls 2000] [--concurrency 64]
        [--latency 1.0] [--skip-template] [--skip-llm] [--judge]

The machine is shared (2 cores): other processes depress the figures.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from kernelbook_lib.params import GenerateParams

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


#: One Prefect home for every worker of a run: its database is migrated once, by the first.
_PREFECT_HOME = tempfile.mkdtemp(prefix="prompt-gen-bench-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)


def _env(home: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LLM_", "PRIME_", "GENERATOR_"))}
    env.update({
        "PREFECT_HOME": _PREFECT_HOME,
        # A loaded 2-core machine can take minutes to start the ephemeral server the first time.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",
        "KERNELBOOK_ENV_FILE": os.path.join(home, "no.env"),
        "KERNELBOOK_CACHE_DIR": os.path.join(home, "cache"),
        "PYTHONPATH": str(ROOT),
    })
    env.update(extra)
    return env


def _run_worker(args: list[str], env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=7200, cwd=ROOT)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-6000:])
        raise SystemExit(f"worker {args[:2]} failed (exit {out.returncode})")
    return json.loads(lines[-1])


# --- workers (one measurement, one fresh process) ------------------------------------------------


def worker_template_flow(src: str, out: str) -> None:
    start = time.perf_counter()
    from prefect import flow

    from flows.generate_prompts import generate_prompts

    @flow(name="warm-up")
    def warm_up() -> int:
        return 1

    warm_up()  # imports and the ephemeral Prefect server's start, measured apart
    started = time.perf_counter()
    summary = generate_prompts(GenerateParams(source=src, backend="template", out=out))
    end = time.perf_counter()
    print(json.dumps({"startup_s": round(started - start, 2), "wall_s": round(end - started, 2),
                      "rows_in": summary["stages"][0]["rows_in"], "prompts": summary["datasets"]["synthetic"]["train"],
                      "stages": summary["stages"]}), flush=True)


def worker_template_library(src: str) -> None:
    import polars as pl

    from kernelbook_lib import loading, prompt_dataset, prompt_gen

    start = time.perf_counter()
    prepared = prompt_dataset.prepare(loading.LoadedSource(pl.read_parquet(src), src))
    t_load = time.perf_counter()
    dedupe = prompt_dataset.dedupe_problems(prepared.result.frame)
    specs = prompt_gen.template_spec_rows(dedupe.frame)
    result = prompt_gen.apply_specs(dedupe.frame, specs)
    end = time.perf_counter()
    print(json.dumps({"wall_s": round(end - start, 2), "load_s": round(t_load - start, 2),
                      "template_s": round(end - t_load, 2), "rows_in": prepared.result.report.rows_in,
                      "prompts": result.report.rows_out}), flush=True)


def worker_llm(mode: str, src: str, out: str, calls: int) -> None:
    from prefect import flow


    @flow(name="warm-up")
    def warm_up() -> int:
        return 1

    warm_up()  # starts the ephemeral Prefect server (not measured)
    if mode == "generate":
        from flows.generate_prompts import generate_prompts

        start = time.perf_counter()
        # One call per distinct problem: the generated problems share few templates, so families
        # (the default) would collapse them and measure far fewer calls.
        summary = generate_prompts(GenerateParams(source=src, backend="llm", out=out, near_dup=False))
        wall = time.perf_counter() - start
        accounting = summary["llm"]
    else:
        from kernelbook_lib.rubric import JUDGE_TASK
        from tests.fixtures.fake_data import judge_requests
        from tasks.llm import run_llm_requests

        requests = judge_requests(calls, seed=1)

        @flow(name="bench-judge")
        def bench() -> dict:
            return run_llm_requests(JUDGE_TASK, requests, progress_label="judge").accounting

        start = time.perf_counter()
        accounting = bench()
        wall = time.perf_counter() - start
    print(json.dumps({"flow_wall_s": round(wall, 2), "llm_wall_s": accounting["wall_s"],
                      "calls": accounting["calls_made"], "succeeded": accounting["succeeded"]}), flush=True)


# --- the driver ----------------------------------------------------------------------------------


def bench_template(rows: int) -> None:
    from tests.fixtures.fake_data import write_kernelbook

    work = Path(tempfile.mkdtemp(prefix="prompt-gen-bench-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    src = work / "kernelbook.parquet"
    write_kernelbook(src, n_rows=rows, seed=7, duplicates=max(4, rows // 1000), empty_code=max(2, rows // 5000))
    lib = _run_worker(["--worker", "template-library", "--src", str(src)], _env(str(work / "lib")))
    flow = _run_worker(["--worker", "template-flow", "--src", str(src), "--out", str(work / "out")], _env(str(work / "flow")))
    print(f"template backend, {rows} KernelBook-schema rows -> {lib['prompts']} prompts")
    print(f"  library stages (load checks + dedupe + template + validation): {lib['wall_s']:.1f} s "
          f"({lib['rows_in'] / lib['wall_s']:.0f} rows/s; load {lib['load_s']:.1f} s, template {lib['template_s']:.1f} s)")
    print(f"  the flow (read, load checks, dedupe, template in task runs, all outputs written): {flow['wall_s']:.1f} s "
          f"({flow['rows_in'] / flow['wall_s']:.0f} rows/s), after {flow['startup_s']:.1f} s of imports and "
          "ephemeral Prefect server start")


def bench_llm(calls: int, concurrency: int, latency: float, judge: bool) -> None:
    from tests.fixtures.fake_data import write_kernelbook
    from tests.fixtures.llm_server import LLMTestServer

    work = Path(tempfile.mkdtemp(prefix="prompt-gen-llm-bench-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    src = work / "kernelbook.parquet"
    write_kernelbook(src, n_rows=calls + 2, seed=11, duplicates=0, empty_code=2)  # `calls` distinct problems
    ideal = calls * latency / concurrency
    print(f"LLM backend: {calls} distinct problems, concurrency {concurrency}, latency {latency}s; ideal wall {ideal:.1f} s")
    modes = ["generate", "judge"] if judge else ["generate"]
    with LLMTestServer.spawn(latency=latency) as server:
        for mode in modes:
            server.reset()
            home = work / mode
            env = _env(str(home), LLM_BASE_URL=server.base_url, PRIME_API_KEY=server.api_key or "",
                       LLM_CONCURRENCY=str(concurrency), LLM_CONCURRENCY_LIMIT_NAME=f"bench-{mode}-{os.getpid()}",
                       LLM_TIMEOUT_S="120", PREFECT_LOGGING_LEVEL="WARNING")
            res = _run_worker(["--worker", f"llm-{mode}", "--src", str(src), "--out", str(home / "out"),
                               "--calls", str(calls)], env)
            stats = server.stats()
            if res["succeeded"] != calls:
                raise SystemExit(f"{mode}: only {res['succeeded']} of {calls} requests succeeded")
            print(f"  {mode:8} calls {res['calls']:5d}  LLM stage wall {res['llm_wall_s']:6.1f} s  "
                  f"efficiency {ideal / res['llm_wall_s']:.3f}  flow wall {res['flow_wall_s']:6.1f} s  "
                  f"max in flight {stats['max_in_flight']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=18_162)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--skip-template", action="store_true")
    parser.add_argument("--skip-llm", action="store_true")
    parser.add_argument("--judge", action="store_true", help="also run as many judge requests the same way")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "template-flow":
        return worker_template_flow(args.src, args.out)
    if args.worker == "template-library":
        return worker_template_library(args.src)
    if args.worker in ("llm-generate", "llm-judge"):
        return worker_llm(args.worker.split("-", 1)[1], args.src, args.out, args.calls)
    if not args.skip_template:
        bench_template(args.rows)
    if not args.skip_llm:
        bench_llm(args.calls, args.concurrency, args.latency, args.judge)


if __name__ == "__main__":
    main()
