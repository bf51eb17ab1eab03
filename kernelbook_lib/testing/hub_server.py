"""A loopback stand-in for the Hugging Face Hub endpoints that publishing uses.

Real HTTP on 127.0.0.1 (a ``ThreadingHTTPServer`` in a background thread), so
``huggingface_hub``'s own client code runs unchanged against it: point ``HfApi(endpoint=...)``
or ``HF_ENDPOINT`` at :attr:`HubStandIn.endpoint`. It answers:

- ``POST /api/repos/create``: create a repo (409 when it exists, like the Hub);
- ``GET  /api/{type}s/{owner}/{name}[/revision/{rev}]``: repo info (``private``, ``sha``, files);
- ``GET  /api/{type}s/{owner}/{name}/tree/{rev}[/{path}]``: list files (``upload_folder`` with
  ``delete_patterns`` lists the remote files first);
- ``POST /api/{type}s/{owner}/{name}/preupload/{rev}``: the upload mode of each file;
- ``POST /api/{type}s/{owner}/{name}/commit/{rev}``: one commit (ndjson body);
- ``POST /api/validate-yaml``: card metadata check (used when ``hf_xet`` is not installed).

Every request must carry ``Authorization: Bearer <token>`` with the token the stand-in was
started with, otherwise it gets the Hub's 401. ``forbid_writes=True`` answers 403 to repo
creation, preupload and commit (a token without write access).

Every file is declared ``regular`` at preupload (this stand-in has no LFS/Xet storage), so each
file's whole content travels base64-encoded inside the commit request: :attr:`Repo.commits`
holds exactly the bytes the client sent. The stand-in never stores or records the token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
_REPO_PATH = re.compile(r"^/api/(?P<type>models|datasets|spaces)/(?P<owner>[^/]+)/(?P<name>[^/]+)(?P<rest>/.*)?$")


def git_blob_oid(content: bytes) -> str:
    """The git object id of a file (what the Hub reports as a regular file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass(frozen=True)
class Commit:
    oid: str
    summary: str
    description: str
    added: dict[str, bytes]  # path -> the exact bytes sent
    deleted: tuple[str, ...]


@dataclass
class Repo:
    repo_type: str  # "model", "dataset" or "space"
    repo_id: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1].oid if self.commits else "0" * 40


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # without the query string
    query: dict[str, list[str]]
    authorized: bool  # carried the expected bearer token (the token itself is never kept)


class _Reply(Exception):
    """Raised inside a handler to answer with ``status`` and a JSON body."""

    def __init__(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


class HubStandIn:
    """The stand-in server. Use as a context manager: ``with HubStandIn(token) as hub: ...``."""

    def __init__(self, token: str, *, forbid_writes: bool = False) -> None:
        self._token = token
        self.forbid_writes = forbid_writes
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> HubStandIn:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-stand-in", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HubStandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("the stand-in is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- helpers for tests -----------------------------------------------------------------

    def add_repo(self, repo_id: str, *, repo_type: str = "dataset", private: bool = False, files: dict[str, bytes] | None = None) -> Repo:
        """Create a repo as if it had been pushed before (with ``files`` in its first commit)."""
        with self._lock:
            repo = self._create(repo_type, repo_id, private)
            if files:
                self._apply_commit(repo, "earlier upload", "", dict(files), ())
            return repo

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        return self.repos[(repo_type, repo_id)]

    # --- request handling (called from the server threads) ----------------------------------

    def handle(self, method: str, raw_path: str, headers, body: bytes) -> tuple[int, object, dict[str, str]]:
        parts = urlsplit(raw_path)
        path, query = parts.path, parse_qs(parts.query)
        authorized = headers.get("authorization") == f"Bearer {self._token}"
        with self._lock:
            self.requests.append(RecordedRequest(method, path, query, authorized))
        try:
            if not authorized:
                raise _Reply(401, {"error": "Invalid credentials in Authorization header"})
            with self._lock:
                return 200, self._route(method, path, query, body), {}
        except _Reply as reply:
            return reply.status, reply.body, reply.headers

    def _route(self, method: str, path: str, query: dict, body: bytes) -> object:
        if method == "POST" and path == "/api/repos/create":
            return self._create_endpoint(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body))
        match = _REPO_PATH.match(path)
        if match is None:
            raise _Reply(404, {"error": f"no such endpoint in the stand-in: {method} {path}"})
        repo_type = match["type"][:-1]
        repo_id = f"{unquote(match['owner'])}/{unquote(match['name'])}"
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise _Reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        rest = match["rest"] or ""
        if method == "GET" and (rest == "" or rest.startswith("/revision/")):
            return {
                "id": repo.repo_id,
                "private": repo.private,
                "sha": repo.sha,
                "siblings": [{"rfilename": p} for p in sorted(repo.files)],
            }
        if method == "GET" and rest.startswith("/tree/"):
            _, _, _, *sub = rest.split("/", 3)
            return self._tree(repo, unquote(sub[0]) if sub else "", query.get("recursive", ["false"])[0] == "true")
        if method == "POST" and rest.startswith("/preupload/"):
            self._check_write()
            return self._preupload(repo, json.loads(body))
        if method == "POST" and rest.startswith("/commit/"):
            self._check_write()
            return self._commit(repo, body)
        raise _Reply(404, {"error": f"no such endpoint in the stand-in: {method} {path}"})

    def _check_write(self) -> None:
        if self.forbid_writes:
            raise _Reply(403, {"error": "You don't have the rights to write to this repository"})

    def _create(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private)
        self.repos[(repo_type, repo_id)] = repo
        self._apply_commit(repo, "initial commit", "", {".gitattributes": GITATTRIBUTES}, ())
        return repo

    def _create_endpoint(self, payload: dict) -> dict:
        self._check_write()
        repo_type = payload.get("type") or "model"
        owner, name = payload.get("organization"), payload["name"]
        if not owner:
            raise _Reply(400, {"error": "the stand-in needs an explicit owner/name repo id"})
        repo_id = f"{owner}/{name}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.endpoint}/{prefix}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            raise _Reply(409, {"error": f"You already created this {repo_type} repo", "url": url})
        self._create(repo_type, repo_id, private=payload.get("visibility") == "private" or payload.get("private") is True)
        return {"url": url, "name": repo_id}

    @staticmethod
    def _validate_yaml(payload: dict) -> dict:
        content = payload.get("content", "")
        if content.startswith("---"):
            try:
                yaml.safe_load(content.split("---", 2)[1])
            except yaml.YAMLError as exc:
                raise _Reply(400, {"errors": [{"message": str(exc)}]}) from None
        return {"errors": [], "warnings": []}

    @staticmethod
    def _tree(repo: Repo, under: str, recursive: bool) -> list[dict]:
        prefix = f"{under.strip('/')}/" if under.strip("/") else ""
        entries: dict[str, dict] = {}
        for path, content in sorted(repo.files.items()):
            if not path.startswith(prefix):
                continue
            relative = path[len(prefix):].split("/")
            # Folders on the way to the file, then the file itself (only direct children unless recursive).
            for depth in range(1, len(relative)):
                folder = prefix + "/".join(relative[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"type": "directory", "oid": "0" * 40, "size": 0, "path": folder})
            if recursive or len(relative) == 1:
                entries[path] = {"type": "file", "oid": git_blob_oid(content), "size": len(content), "path": path}
        return list(entries.values())

    @staticmethod
    def _preupload(repo: Repo, payload: dict) -> dict:
        return {
            "files": [
                {
                    "path": f["path"],
                    "uploadMode": "regular",  # no LFS/Xet here: the content rides in the commit
                    "shouldIgnore": False,
                    "oid": git_blob_oid(repo.files[f["path"]]) if f["path"] in repo.files else None,
                }
                for f in payload["files"]
            ]
        }

    def _commit(self, repo: Repo, body: bytes) -> dict:
        header: dict = {}
        added: dict[str, bytes] = {}
        deleted: list[str] = []
        for line in body.decode("utf-8").splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise _Reply(422, {"error": f"unsupported encoding for {value['path']}"})
                added[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            else:  # lfsFile: this stand-in has no LFS storage to point at
                raise _Reply(422, {"error": f"the stand-in does not accept {key} entries"})
        if not header.get("summary"):
            raise _Reply(400, {"error": "a commit needs a summary"})
        oid = self._apply_commit(repo, header["summary"], header.get("description", ""), added, tuple(deleted))
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return {
            "success": True,
            "commitOid": oid,
            "commitUrl": f"{self.endpoint}/{prefix}{repo.repo_id}/commit/{oid}",
            "hookOutput": "",
        }

    @staticmethod
    def _apply_commit(repo: Repo, summary: str, description: str, added: dict[str, bytes], deleted: tuple[str, ...]) -> str:
        for path in deleted:
            for existing in [p for p in repo.files if p == path or p.startswith(path.rstrip("/") + "/")]:
                del repo.files[existing]
        repo.files.update(added)
        oid = hashlib.sha1(f"{repo.repo_id}:{len(repo.commits)}:{summary}".encode()).hexdigest()
        repo.commits.append(Commit(oid=oid, summary=summary, description=description, added=added, deleted=deleted))
        return oid


def _make_handler(hub: HubStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's client expects

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            status, payload, headers = hub.handle(self.command, self.path, self.headers, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PUT = _serve

        def log_message(self, format, *args) -> None:  # noqa: A002  (silence the default stderr log)
            pass

    return Handler
