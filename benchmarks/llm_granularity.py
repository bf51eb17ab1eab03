"""Benchmark: how to map thousands of LLM calls onto Prefect task runs.

Against the loopback server (a child process, 1.0 s latency by default), each variant resolves
the same N distinct judge requests at concurrency C, under the ephemeral Prefect server and
under a real ``prefect server start`` on a free loopback port (temporary PREFECT_HOME):

- ``bare``: no Prefect at all, an asyncio loop + one AsyncOpenAI client + a semaphore
  (the speed limit of this machine);
- ``bare-pooled``: the same with one client per 16 concurrent calls (what ``tasks/llm/``
  does: httpx's pool bookkeeping is O(connections) per request);
- ``chunk``: what ``tasks/llm/`` does: task runs of many calls each, slots leased from the
  Prefect global concurrency limit in blocks and lent to calls by a local pool;
- ``chunk-slot-per-call``: the same chunks, but every call takes its own Prefect slot
  (``concurrency(name, occupy=1)``) behind a local semaphore;
- ``task-per-call``: one Prefect task run per call (Prefect cache policy: ``cache_key_fn`` +
  ``result_storage``), all awaited on one event loop, slots from the same local pool.

Every variant runs in a fresh child process. Printed per run: wall time, efficiency
``(calls x latency / concurrency) / wall``, CPU seconds of the client process and of the
Prefect server process, and the most requests the LLM server saw in flight.

    uv run python benchmarks/llm_granularity.py [--calls 2000] [--concurrency 64] [--latency 1.0]
        [--modes bare,chunk,chunk-slot-per-call,task-per-call] [--backends ephemeral,server]

The machine is shared (2 cores): other processes depress the figures; compare variants
within one invocation.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("bare", "bare-pooled", "chunk", "chunk-slot-per-call", "task-per-call")
BACKENDS = ("ephemeral", "server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _base_env(home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LLM_", "PRIME_"))}
    env.update({
        "PREFECT_HOME": os.path.join(home, "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "KERNELBOOK_ENV_FILE": os.path.join(home, "no.env"),
        "PYTHONPATH": str(ROOT),
    })
    return env


def start_prefect_server(home: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = _base_env(home)
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("prefect server did not start within 180 s")


def run_worker(mode: str, backend: str, args: argparse.Namespace, llm_url: str, api_key: str,
               prefect_url: str | None, server_pid: int | None) -> dict:
    home = tempfile.mkdtemp(prefix="llm-gran-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    env = _base_env(home)
    env.update({
        "KERNELBOOK_CACHE_DIR": os.path.join(home, "cache"),
        "LLM_BASE_URL": llm_url,
        "PRIME_API_KEY": api_key,
        "LLM_CONCURRENCY": str(args.concurrency),
        "LLM_CONCURRENCY_LIMIT_NAME": f"bench-{mode}-{os.getpid()}-{time.time_ns()}",
        "LLM_TIMEOUT_S": "120",
    })
    if prefect_url:
        env["PREFECT_API_URL"] = prefect_url
    cmd = [sys.executable, __file__, "--worker", mode, "--calls", str(args.calls), "--concurrency",
           str(args.concurrency), "--latency", str(args.latency)]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    if server_pid:
        cmd += ["--server-pid", str(server_pid)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-12000:])
        raise RuntimeError(f"worker {mode}/{backend} failed (exit {out.returncode})")
    return json.loads(lines[-1])


# --- the worker (one variant, one process) --------------------------------------------------


def _prefect_server_process(server_pid: int | None):
    """The Prefect server process whose CPU we account: the given pid, or the ephemeral
    server (a child of this process)."""
    import psutil

    if server_pid:
        return psutil.Process(server_pid)
    for child in psutil.Process().children(recursive=True):
        try:
            if "prefect" in " ".join(child.cmdline()) or "uvicorn" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def _cpu(proc) -> float:
    if proc is None:
        return float("nan")
    times = proc.cpu_times()
    return times.user + times.system


async def _bare(requests, concurrency: int, per_client: int | None = None) -> None:
    """No Prefect: a semaphore, and one client (or one client per ``per_client`` slots)."""
    import asyncio

    from kernelbook_lib import llm
    from kernelbook_lib.rubric import JUDGE_TASK
    from kernelbook_lib.settings import load_settings

    settings = load_settings()
    per_client = per_client or concurrency
    clients = [llm.make_async_client(settings, max_connections=per_client)
               for _ in range(-(-concurrency // per_client))]
    slots = list(range(concurrency))
    gate = asyncio.Semaphore(concurrency)

    async def one(request):
        async with gate:
            slot = slots.pop()
            try:
                result = await llm.call(clients[slot // per_client], JUDGE_TASK, request)
            finally:
                slots.append(slot)
            assert result.failure is None, result.failure

    await asyncio.gather(*(one(r) for r in requests))
    for client in clients:
        await client.close()


def _per_call_slot_pool():
    """A SlotPool stand-in: every call takes its own Prefect slot (behind a local semaphore)."""
    import asyncio

    from prefect.concurrency.asyncio import concurrency

    from tasks.llm import SlotPool

    class PerCallSlots(SlotPool):
        def __init__(self, limit_name: str, cap: int, **_: object) -> None:
            super().__init__(limit_name, cap)
            self._gate = asyncio.Semaphore(cap)
            self._held_cms: dict[object, object] = {}

        async def acquire(self) -> int:
            await self._gate.acquire()
            cm = concurrency(self.limit_name, occupy=1, strict=True, lease_duration=60)
            await cm.__aenter__()
            self.leases_taken += 1
            self._held_cms[asyncio.current_task()] = cm
            self._in_use += 1
            return self._unheld.pop()

        def release(self, slot: int) -> None:  # the real release is async: schedule it, then free the gate
            cm = self._held_cms.pop(asyncio.current_task())
            self._in_use -= 1
            self._unheld.append(slot)

            async def exit_cm() -> None:
                try:
                    await cm.__aexit__(None, None, None)
                finally:
                    self._gate.release()

            task = asyncio.ensure_future(exit_cm())
            self._lease_tasks.add(task)
            task.add_done_callback(self._lease_tasks.discard)

        async def close(self) -> None:
            if self._lease_tasks:
                await asyncio.gather(*list(self._lease_tasks), return_exceptions=True)

    return PerCallSlots


def _task_per_call_runner():
    """One Prefect task run per call, with Prefect's own cache policy and result storage."""
    import asyncio
    import uuid
    from collections import Counter

    from prefect import task
    from prefect.tasks import exponential_backoff

    from kernelbook_lib import llm
    from kernelbook_lib.llm import LLMOutcome
    from kernelbook_lib.rubric import JUDGE_TASK
    from kernelbook_lib.settings import load_settings
    from tasks import llm as tl

    settings = load_settings()
    storage = tl.llm_cache_dir(settings) / "per-call"  # a Path: Prefect's own LocalFileSystem

    @task(name="llm-request", cache_key_fn=lambda ctx, params: params["request"].key, result_storage=storage,
          result_serializer="json", persist_result=True, retries=settings.llm_retries,
          retry_delay_seconds=exponential_backoff(settings.llm_retry_backoff_s)(settings.llm_retries),
          retry_condition_fn=tl._retry_if_transient, retry_jitter_factor=tl.RETRY_JITTER)
    async def llm_request(request: llm.LLMRequest, run_token: str) -> dict:
        run = tl._RUNS[run_token]
        result = await tl._one_call(run, request, run.secrets, settings.llm_base_url, False, None, None)
        if isinstance(result, tl._Transient):
            raise tl.TransientLLMFailures(Counter([result.failure.kind]), 1, None)
        return result.model_dump()

    async def run_all(requests) -> list[LLMOutcome]:
        cap = await tl.ensure_concurrency_limit(settings.llm_concurrency_limit_name, settings.llm_concurrency, _Quiet())
        pool = tl.SlotPool(settings.llm_concurrency_limit_name, cap)
        run = tl._RunState(token=uuid.uuid4().hex, label="bench", task=JUDGE_TASK, pool=pool,
                           store=tl.result_store(settings), retries=settings.llm_retries,
                           tally=tl.Tally.of(requests), persist_calls=False)
        run.ensure_clients(settings)  # shared by all task runs: the fair best case
        run.secrets = (llm.require_api_key(settings),)
        tl._RUNS[run.token] = run
        try:
            results = await asyncio.gather(*(llm_request(r, run.token) for r in requests))
        finally:
            await pool.close()
            await run.close_clients()
        return [LLMOutcome.model_validate(r) for r in results]

    return run_all


class _Quiet:
    def info(self, *a, **k) -> None: ...
    warning = info


def worker(args: argparse.Namespace) -> None:
    import asyncio


    from tests.fixtures.fake_data import judge_requests

    requests = judge_requests(args.calls, seed=1)
    result: dict = {"mode": args.worker, "calls": args.calls, "concurrency": args.concurrency, "latency": args.latency}

    if args.worker in ("bare", "bare-pooled"):
        from tasks.llm import CONNECTIONS_PER_CLIENT

        per_client = CONNECTIONS_PER_CLIENT if args.worker == "bare-pooled" else None
        start_cpu, start = time.process_time(), time.perf_counter()
        asyncio.run(_bare(requests, args.concurrency, per_client))
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        server_cpu = float("nan")
    else:
        from prefect import flow

        import tasks.llm as tl

        @flow(name="warm-up")
        def warm_up() -> int:
            return 1

        warm_up()  # starts the ephemeral server (not measured)
        server = _prefect_server_process(args.server_pid)

        if args.worker == "task-per-call":
            run_all = _task_per_call_runner()

            @flow(name="bench-task-per-call")
            async def bench():
                outcomes = await run_all(requests)
                return sum(o.ok for o in outcomes)
        else:
            if args.worker == "chunk-slot-per-call":
                tl.run.SlotPool = _per_call_slot_pool()  # tasks.llm.run makes the run's pool

            @flow(name=f"bench-{args.worker}")
            def bench():
                from kernelbook_lib.rubric import JUDGE_TASK

                res = tl.run_llm_requests(JUDGE_TASK, requests, progress_label="bench", chunk_size=args.chunk_size)
                return res.accounting["succeeded"]

        start_server_cpu = _cpu(server)
        start_cpu, start = time.process_time(), time.perf_counter()
        ok = bench()
        if asyncio.iscoroutine(ok):  # the async flow of task-per-call
            ok = asyncio.run(ok)
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        server_cpu = _cpu(server) - start_server_cpu
        if ok != args.calls:
            raise SystemExit(f"only {ok} of {args.calls} requests succeeded")
    ideal = args.calls * args.latency / args.concurrency
    result.update({"wall_s": round(wall, 2), "ideal_s": round(ideal, 2), "efficiency": round(ideal / wall, 3),
                   "client_cpu_s": round(cpu, 1), "prefect_server_cpu_s": round(server_cpu, 1)})
    print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from tests.fixtures.llm_server import LLMTestServer

    modes = [m for m in args.modes.split(",") if m]
    backends = [b for b in args.backends.split(",") if b]
    print(f"{args.calls} calls, concurrency {args.concurrency}, latency {args.latency}s; "
          f"ideal wall {args.calls * args.latency / args.concurrency:.1f}s", flush=True)
    print(f"{'backend':10} {'mode':20} {'wall s':>7} {'eff':>6} {'client cpu s':>12} {'server cpu s':>12} {'max in flight':>13}")
    with LLMTestServer.spawn(latency=args.latency) as llm_server:
        for backend in backends:
            server_proc, prefect_url = (None, None)
            if backend == "server":
                server_home = tempfile.mkdtemp(prefix="llm-gran-server-")
                atexit.register(shutil.rmtree, server_home, ignore_errors=True)
                server_proc, prefect_url = start_prefect_server(server_home)
            try:
                for mode in modes:
                    if mode.startswith("bare") and backend != backends[0]:
                        continue  # no Prefect: once is enough
                    llm_server.reset()
                    res = run_worker(mode, backend, args, llm_server.base_url, llm_server.api_key or "",
                                     prefect_url, server_proc.pid if server_proc else None)
                    stats = llm_server.stats()
                    print(f"{'-' if mode.startswith('bare') else backend:10} {mode:20} {res['wall_s']:7.1f} {res['efficiency']:6.3f} "
                          f"{res['client_cpu_s']:12.1f} {res['prefect_server_cpu_s']:12.1f} {stats['max_in_flight']:13d}",
                          flush=True)
            finally:
                if server_proc is not None:
                    server_proc.terminate()
                    try:
                        server_proc.wait(10)
                    except subprocess.TimeoutExpired:
                        server_proc.kill()


if __name__ == "__main__":
    main()
