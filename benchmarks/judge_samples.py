"""Benchmark: what ``--judge-samples 3`` costs against one verdict per row, at the same concurrency.

Starts the loopback OpenAI-compatible server (a child process, ``--latency`` s per reply), builds
``--rows`` judge requests with the real judge prompt (synthetic modules and solutions of realistic
size), and judges them inside a Prefect flow, each run from an empty cache: once with one sample
per row, once with K samples (each its own cached call: ``LLMRequest.as_sample``, what the judge
stage sends for ``--judge-samples K``). Prints wall time, calls and the ratio of each to K = 1.

    uv run python benchmarks/judge_samples.py [--rows 2000] [--samples 3] [--latency 1.0] [--concurrency 64]

The machine may be shared: other processes depress the figures.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="judge-samples-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.environ.setdefault("PREFECT_HOME", os.path.join(home, "prefect"))
    os.environ["KERNELBOOK_ENV_FILE"] = os.path.join(home, "no.env")  # never a developer's real key
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    import tasks  # noqa: F401  (the project's Prefect defaults, before the flow below runs)
    from prefect import flow

    from kernelbook_lib.rubric import JUDGE_TASK
    from tasks.llm import run_llm_requests
    from tests.fixtures.fake_data import judge_requests
    from tests.fixtures.llm_server import LLMTestServer

    base = judge_requests(args.rows, seed=7)

    todo: dict[str, list] = {}  # the flow reads its requests from here: flow parameters are stored by the server

    @flow(name="judge-samples")
    def judge(label: str):
        return run_llm_requests(JUDGE_TASK, todo[label], progress_label=label)

    @flow(name="warm-up")
    def warm_up() -> None:
        return None

    with LLMTestServer.spawn(latency=args.latency) as server:
        os.environ.update({"LLM_BASE_URL": server.base_url, "PRIME_API_KEY": server.api_key or "", "LLM_TIMEOUT_S": "120",
                           "LLM_CONCURRENCY": str(args.concurrency)})
        warm_up()  # starts the ephemeral Prefect server (not measured)
        print(f"{args.rows} rows, latency {args.latency} s, LLM_CONCURRENCY {args.concurrency}")
        print(f"{'samples':>7} {'requests':>8} {'calls':>6} {'wall s':>8} {'ideal s':>8} {'x wall of K=1':>13} {'x calls':>8}")
        first = None
        for k in (1, args.samples):
            os.environ["KERNELBOOK_CACHE_DIR"] = os.path.join(home, f"cache-{k}")
            requests = todo[f"judge-k{k}"] = [r.as_sample(s) for r in base for s in range(k)]
            started = time.monotonic()
            result = judge(f"judge-k{k}")
            wall = time.monotonic() - started
            calls = result.accounting["calls_made"]
            ideal = calls * args.latency / args.concurrency
            first = first or (wall, calls)
            print(f"{k:>7} {len(requests):>8} {calls:>6} {wall:>8.1f} {ideal:>8.1f} {wall / first[0]:>13.2f} {calls / first[1]:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
