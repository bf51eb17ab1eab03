"""Benchmark: the LLM judge's throughput through ``tasks/llm/``, end to end.

Starts the loopback OpenAI-compatible server (a child process, 1.0 s per reply, no faults),
builds 7,181 judge requests (the size of the real filtered dataset) with the real judge prompt
from synthetic modules and solutions of realistic size, and judges them inside a Prefect flow
(ephemeral Prefect server) at LLM_CONCURRENCY 64 and 256, each from an empty cache. Prints
``efficiency = (calls x latency / concurrency) / wall`` (1.0 is the speed limit; targets:
>= 0.90 at 64, >= 0.80 at 256). Then re-runs the 64 case against its warm cache and prints its
wall time as a % of the first run (target < 10 %).

    uv run python benchmarks/judge_throughput.py [--calls 7181] [--latency 1.0] [--concurrency 64,256]
        [--no-gc-freeze] [--latency-sigma 0.5 --hedge 0.95]

``--latency-sigma S`` makes the server's latencies lognormal (median ``--latency``; the ideal then
uses their mean, ``latency x exp(S^2 / 2)``). ``--hedge Q`` runs every level twice from an empty
cache, without and with LLM_HEDGE_AFTER_QUANTILE=Q, and prints both runs' efficiency and extra
requests (calls beyond one per prompt: the hedges; docs/llm.md, "Hedged requests").

``--no-gc-freeze`` runs without ``tasks.llm.run.FREEZE_GC`` (the collector's full passes then walk
the whole heap during the calls), to measure what freezing it buys (docs/design.md).

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
    parser.add_argument("--calls", type=int, default=7181)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--concurrency", default="64,256", help="comma-separated; the first is re-run warm")
    parser.add_argument("--no-gc-freeze", action="store_true", help="do not freeze the heap during the calls")
    parser.add_argument("--latency-sigma", type=float, default=0.0, help="lognormal latencies with this sigma")
    parser.add_argument("--hedge", type=float, default=None, help="also run with LLM_HEDGE_AFTER_QUANTILE=Q")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",") if c]

    home = tempfile.mkdtemp(prefix="judge-throughput-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.environ.setdefault("PREFECT_HOME", os.path.join(home, "prefect"))
    os.environ["KERNELBOOK_ENV_FILE"] = os.path.join(home, "no.env")  # never a developer's real key
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    import tasks

    from prefect import flow

    from kernelbook_lib.rubric import JUDGE_TASK
    from tests.fixtures.fake_data import judge_requests
    from tests.fixtures.llm_server import LLMTestServer
    import tasks.llm.run
    from tasks.llm import run_llm_requests

    tasks.llm.run.FREEZE_GC = not args.no_gc_freeze  # read by tasks.llm.run, so set there
    requests = judge_requests(args.calls, seed=7)
    chars = sum(r.prompt_chars for r in requests) / len(requests)
    print(f"{len(requests)} judge requests, mean prompt {chars:,.0f} characters; latency {args.latency}s"
          + ("; heap not frozen" if args.no_gc_freeze else ""), flush=True)

    @flow(name="judge-throughput")
    def judge(label: str):
        return run_llm_requests(JUDGE_TASK, requests, progress_label=label)

    @flow(name="warm-up")
    def warm_up() -> None:
        return None

    import math

    mean_latency = args.latency * math.exp(args.latency_sigma ** 2 / 2)
    variants: list[tuple[str, float | None]] = [("", None)] + ([(f", hedged@{args.hedge:g}", args.hedge)]
                                                              if args.hedge is not None else [])
    with LLMTestServer.spawn(latency=args.latency, latency_sigma=args.latency_sigma) as server:
        os.environ.update({"LLM_BASE_URL": server.base_url, "PRIME_API_KEY": server.api_key or "",
                           "LLM_TIMEOUT_S": "120"})
        warm_up()  # starts the ephemeral Prefect server (not measured)
        print(f"{'run':36} {'wall s':>8} {'ideal s':>8} {'efficiency':>10} {'calls':>6} {'extra':>6} {'cpu s':>6} "
              f"{'max in flight':>13}")
        first_64: float | None = None
        for i, concurrency in enumerate(levels):
            for name, quantile in variants:
                os.environ["LLM_CONCURRENCY"] = str(concurrency)
                os.environ["LLM_CONCURRENCY_LIMIT_NAME"] = f"judge-throughput-{concurrency}"
                os.environ["KERNELBOOK_CACHE_DIR"] = os.path.join(home, f"cache-{concurrency}{name.strip(', ')}")
                if quantile is None:
                    os.environ.pop("LLM_HEDGE_AFTER_QUANTILE", None)
                else:
                    os.environ["LLM_HEDGE_AFTER_QUANTILE"] = str(quantile)
                server.reset()
                cpu, start = time.process_time(), time.perf_counter()
                result = judge(f"judge@{concurrency}")
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu
                stats = server.stats()
                ideal = len(requests) * mean_latency / concurrency  # one call per prompt at the mean latency
                extra = result.accounting["calls_made"] - len(requests)
                assert result.accounting["succeeded"] == len(requests), result.accounting
                print(f"{'cold, concurrency ' + str(concurrency) + name:36} {wall:8.1f} {ideal:8.1f} {ideal / wall:10.3f} "
                      f"{stats['calls_total']:6d} {extra:6d} {cpu:6.1f} {stats['max_in_flight']:13d}", flush=True)
                if i == 0 and quantile is None:
                    first_64 = wall
        os.environ.pop("LLM_HEDGE_AFTER_QUANTILE", None)
        concurrency = levels[0]
        os.environ["LLM_CONCURRENCY"] = str(concurrency)
        os.environ["LLM_CONCURRENCY_LIMIT_NAME"] = f"judge-throughput-{concurrency}"
        os.environ["KERNELBOOK_CACHE_DIR"] = os.path.join(home, f"cache-{concurrency}")
        server.reset()
        cpu, start = time.process_time(), time.perf_counter()
        result = judge(f"judge@{concurrency}-warm")
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert result.accounting["cache_hits"] == len(requests) and server.stats()["calls_total"] == 0
        print(f"{'warm, concurrency ' + str(concurrency):36} {wall:8.1f} {'':8} {'':10} {0:6d} {0:6d} {cpu:6.1f}")
        assert first_64 is not None
        print(f"warm re-run: {100 * wall / first_64:.1f} % of the cold run's wall time (target < 10 %)")


if __name__ == "__main__":
    main()
