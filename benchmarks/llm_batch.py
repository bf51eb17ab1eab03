"""Benchmark: batch mode (``tasks/llm/batch.py``) end to end, 7,181 judge requests through the
loopback server's Batch API.

Starts the loopback OpenAI-compatible server in a child process (each batch spends at least
``--stage-s`` seconds in each of validating, in_progress and finalizing: the provider's time),
builds 7,181 judge requests (the size of the real filtered dataset) with the real judge prompt,
and judges them in batch mode inside a Prefect flow (ephemeral Prefect server) from an empty
cache: the input files are built and uploaded, the batches created and polled every
``--poll-s`` seconds, the output files read, every reply checked and cached. Prints the wall
time, the server's time (3 x stage-s for batches that run side by side, plus the seconds the
server spent serving the Batch API: reading the uploads, answering every line, serving the
files), the wall time beyond the server's (ours: building, uploading, polling lag, reading,
checking, caching, Prefect), and the bytes uploaded. Then re-runs the same job against its warm
cache (it must make no request) and prints its wall time.

    uv run python benchmarks/llm_batch.py [--calls 7181] [--stage-s 2.0] [--poll-s 0.25]
        [--max-requests 50000] [--max-bytes 200000000]

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
    parser.add_argument("--stage-s", type=float, default=2.0, help="seconds a batch spends at least in each step")
    parser.add_argument("--poll-s", type=float, default=0.25, help="LLM_BATCH_POLL_S")
    parser.add_argument("--max-requests", type=int, default=50_000, help="LLM_BATCH_MAX_REQUESTS")
    parser.add_argument("--max-bytes", type=int, default=200_000_000, help="LLM_BATCH_MAX_BYTES")
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="llm-batch-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.environ.setdefault("PREFECT_HOME", os.path.join(home, "prefect"))
    os.environ["KERNELBOOK_ENV_FILE"] = os.path.join(home, "no.env")  # never a developer's real key
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ["KERNELBOOK_PROGRESS"] = "plain"

    import tasks  # noqa: F401

    from prefect import flow

    from kernelbook_lib.rubric import JUDGE_TASK
    from tasks.llm import run_llm_requests
    from tests.fixtures.fake_data import judge_requests
    from tests.fixtures.llm_server import LLMTestServer

    requests = judge_requests(args.calls, seed=7)
    chars = sum(r.prompt_chars for r in requests) / len(requests)
    print(f"{len(requests)} judge requests, mean prompt {chars:,.0f} characters; each batch >= {args.stage_s}s in "
          f"each of 3 steps; polled every {args.poll_s}s", flush=True)

    @flow(name="llm-batch-benchmark")
    def judge(label: str):
        return run_llm_requests(JUDGE_TASK, requests, progress_label=label, llm_mode="batch")

    @flow(name="warm-up")
    def warm_up() -> None:
        return None

    with LLMTestServer.spawn(latency=0.0, batch_steps=0, batch_stage_s=args.stage_s) as server:
        os.environ.update({
            "LLM_BASE_URL": server.base_url, "PRIME_API_KEY": server.api_key or "", "LLM_TIMEOUT_S": "300",
            "LLM_BATCH_POLL_S": str(args.poll_s), "LLM_BATCH_MAX_REQUESTS": str(args.max_requests),
            "LLM_BATCH_MAX_BYTES": str(args.max_bytes), "KERNELBOOK_CACHE_DIR": os.path.join(home, "cache"),
        })
        warm_up()  # starts the ephemeral Prefect server (not measured)
        server.reset()
        cpu, start = time.process_time(), time.perf_counter()
        result = judge("judge-batch")
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        stats = server.stats()
        acc = result.accounting
        assert acc["succeeded"] == len(requests) and acc["mode"] == "batch", acc
        assert stats["batch_lines_total"] == len(requests) and stats["calls_total"] == 0, stats
        server_s = 3 * args.stage_s + stats["batch_busy_s"]
        beyond = wall - server_s
        print(f"batches {stats['batches_created']}, lines {stats['batch_lines_total']}, "
              f"uploaded {stats['bytes_uploaded']:,} bytes ({stats['bytes_uploaded'] / 1e6:.1f} MB) in "
              f"{stats['files_uploaded']} files (accounting: {acc['bytes_uploaded']:,} bytes)")
        print(f"cold: wall {wall:.1f} s, server {server_s:.1f} s (3 x {args.stage_s} s + {stats['batch_busy_s']:.1f} s "
              f"serving), beyond the server's {beyond:.1f} s ({1000 * beyond / len(requests):.2f} ms per request), "
              f"cpu {cpu:.1f} s", flush=True)

        server.reset()
        start = time.perf_counter()
        warm = judge("judge-batch-warm")
        warm_wall = time.perf_counter() - start
        stats = server.stats()
        assert warm.accounting["cache_hits"] == len(requests), warm.accounting
        assert stats["batch_api_requests"] == 0 and stats["files_uploaded"] == 0 and stats["calls_total"] == 0, stats
        print(f"warm re-run: wall {warm_wall:.1f} s, no request made ({100 * warm_wall / wall:.1f} % of the cold run)")


if __name__ == "__main__":
    main()
