"""An in-memory stand-in for the Hugging Face Hub, for offline push/pull tests.

`FakeHub` serves the subset of the Hub's HTTP API that `huggingface_hub` 2.4, `transformers` and `datasets`
use to create repos, upload files (regular and LFS), commit, list and download. It binds to 127.0.0.1 only
and keeps everything in memory; nothing leaves the machine.

`huggingface_hub` reads ``HF_ENDPOINT`` when it is imported, so the code that pushes or loads must run in a
process started with ``env=hub.env()``::

    with FakeHub() as hub:
        subprocess.run([sys.executable, "push.py"], env=hub.env(), check=True)
        assert "data/train-00000-of-00001.parquet" in hub.files("tester/traffic", "dataset")

Only what the clients need is implemented: no auth checks (any token is the user ``tester``), no branches other
than ``main`` (a commit on any revision moves ``main``), no pull requests, no xet storage (the env sets
``HF_HUB_DISABLE_XET=1`` so uploads use the classic LFS "basic" transfer).
"""

import base64
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

USER = "tester"
REPO_TYPES = ("model", "dataset", "space")
# Files the fake Hub stores as LFS objects (the real Hub decides by .gitattributes and content; datasets'
# push_to_hub requires "lfs" for parquet shards because it deletes the temporary shard after preupload).
_LFS_SUFFIXES = (
    ".parquet",
    ".arrow",
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".npy",
    ".npz",
    ".h5",
    ".onnx",
    ".pcap",
    ".pcapng",
    ".zip",
    ".gz",
    ".tar",
    ".7z",
    ".png",
    ".jpg",
    ".msgpack",
    ".pkl",
)
_LFS_MIN_SIZE = 10 * 1024 * 1024


def _git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as a regular file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class _Blob:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def entry(self, path: str) -> dict:
        """The tree / paths-info JSON entry of this file."""
        item = {"type": "file", "path": path, "size": len(self.data), "oid": _git_blob_sha1(self.data)}
        if self.lfs:
            item["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": 134}
        return item


@dataclass
class _Commit:
    sha: str
    message: str
    files: dict  # path -> _Blob (the whole snapshot after this commit)


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool = False
    commits: list = field(default_factory=list)  # oldest first

    @property
    def head(self) -> _Commit:
        return self.commits[-1]

    def at(self, revision: str) -> _Commit | None:
        revision = unquote(revision)
        if revision in ("main", "refs/heads/main"):
            return self.head
        for commit in self.commits:
            if commit.sha == revision or (len(revision) >= 7 and commit.sha.startswith(revision)):
                return commit
        return None


class _HubState:
    """Repos, LFS blobs and the lock that serialises writes."""

    def __init__(self):
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.lfs_blobs: dict[str, bytes] = {}  # sha256 -> content
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []  # (method, path) log, for debugging failing tests
        self._counter = 0

    def new_sha(self, seed: str) -> str:
        self._counter += 1
        return hashlib.sha1(f"{seed}:{self._counter}:{time.time_ns()}".encode()).hexdigest()

    def create(self, repo_type: str, repo_id: str, private: bool = False) -> tuple[_Repo, bool]:
        key = (repo_type, repo_id)
        if key in self.repos:
            return self.repos[key], False
        repo = _Repo(repo_type, repo_id, private)
        # The real Hub creates every repo with an initial commit holding .gitattributes.
        gitattributes = (
            b"*.parquet filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
        )
        repo.commits.append(
            _Commit(self.new_sha(repo_id), "initial commit", {".gitattributes": _Blob(gitattributes, False)})
        )
        self.repos[key] = repo
        return repo, True


_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_API_REPO = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(.*))?$")
_RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_LFS_BATCH = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+?)\.git/info/lfs/objects/batch$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"

    # The server object carries the state and the public URL.
    @property
    def state(self) -> _HubState:
        return self.server.hub_state  # type: ignore[attr-defined]

    @property
    def base_url(self) -> str:
        return self.server.base_url  # type: ignore[attr-defined]

    def log_message(self, format, *args):  # keep test output clean
        pass

    # ------------------------------------------------------------------ plumbing
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return b""

    def _send(
        self, status: int, body: bytes = b"", headers: dict | None = None, content_type: str = "application/json"
    ):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None):
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, code: str, message: str):
        self._json({"error": message}, status, {"X-Error-Code": code, "X-Error-Message": message})

    def _repo(self, type_plural: str | None, repo_id: str) -> _Repo | None:
        repo_type = {"models": "model", "datasets": "dataset", "spaces": "space", None: "model"}[type_plural]
        return self.state.repos.get((repo_type, repo_id))

    def _dispatch(self):
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        self.state.requests.append((self.command, self.path))
        try:
            handled = self._route(path, query)
        except Exception as exc:  # a bug in the fake must show up in the client's error, not hang it
            self._error(500, "FakeHubError", f"{type(exc).__name__}: {exc}")
            return
        if not handled:
            self._error(404, "EndpointNotFound", f"fake hub: no route for {self.command} {path}")

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _dispatch

    # ------------------------------------------------------------------ routes
    def _route(self, path: str, query: dict) -> bool:
        method = self.command
        if path == "/api/whoami-v2" and method == "GET":
            self._json(
                {
                    "type": "user",
                    "name": USER,
                    "fullname": USER,
                    "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "fake", "role": "write"}},
                }
            )
            return True
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo()
        if path == "/api/repos/delete" and method == "DELETE":
            payload = json.loads(self._body() or b"{}")
            repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
            with self.state.lock:
                self.state.repos.pop((payload.get("type") or "model", repo_id), None)
            self._json({})
            return True
        if path == "/api/validate-yaml" and method == "POST":
            self._body()
            self._json({"errors": [], "warnings": []})
            return True
        if path.startswith("/lfs-upload/") and method == "PUT":
            oid = path.rsplit("/", 1)[1]
            data = self._body()
            if hashlib.sha256(data).hexdigest() != oid:
                self._error(400, "BadRequest", f"content does not match oid {oid}")
                return True
            with self.state.lock:
                self.state.lfs_blobs[oid] = data
            self._send(200)
            return True
        match = _LFS_BATCH.match(path)
        if match and method == "POST":
            return self._lfs_batch(match.group(1), match.group(2))
        match = _API_REPO.match(path)
        if match:
            return self._api_repo(match.group(1), match.group(2), match.group(3) or "", query)
        match = _RESOLVE.match(path)
        if match and method in ("GET", "HEAD"):
            return self._resolve(match.group(1), match.group(2), match.group(3), match.group(4))
        return False

    def _create_repo(self) -> bool:
        payload = json.loads(self._body() or b"{}")
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            self._error(400, "BadRequest", f"unknown repo type {repo_type!r}")
            return True
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        private = payload.get("private") or payload.get("visibility") == "private"
        with self.state.lock:
            repo, created = self.state.create(repo_type, repo_id, bool(private))
        url = f"{self.base_url}/{_PREFIX[repo_type]}{repo_id}"
        if created:
            self._json({"url": url, "name": repo_id, "id": repo_id})
        else:
            self._json({"error": "You already created this repo", "url": url}, 409)
        return True

    def _lfs_batch(self, type_plural: str | None, repo_id: str) -> bool:
        repo = self._repo(type_plural, repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"repository {repo_id} not found")
            return True
        payload = json.loads(self._body() or b"{}")
        objects = []
        for obj in payload.get("objects", []):
            item = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.state.lfs_blobs:  # already stored objects need no upload action
                item["actions"] = {"upload": {"href": f"{self.base_url}/lfs-upload/{obj['oid']}"}}
            objects.append(item)
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})
        return True

    def _api_repo(self, type_plural: str, repo_id: str, rest: str, query: dict) -> bool:
        method = self.command
        repo = self._repo(type_plural, repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository not found: {repo_id}")
            return True
        parts = rest.split("/", 1) if rest else [""]
        action, tail = parts[0], (parts[1] if len(parts) > 1 else "")
        if action in ("", "revision") and method == "GET":
            commit = repo.head if action == "" else repo.at(tail)
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {tail}")
                return True
            siblings = []
            for path, blob in sorted(commit.files.items()):
                sibling = {"rfilename": path, "size": len(blob.data), "blobId": _git_blob_sha1(blob.data)}
                if blob.lfs:
                    sibling["lfs"] = {"size": len(blob.data), "sha256": blob.sha256, "pointerSize": 134}
                siblings.append(sibling)
            self._json(
                {
                    "id": repo.repo_id,
                    "_id": repo.repo_id,
                    "sha": commit.sha,
                    "private": repo.private,
                    "disabled": False,
                    "gated": False,
                    "downloads": 0,
                    "likes": 0,
                    "tags": [],
                    "cardData": {},
                    "siblings": siblings,
                    "lastModified": "2026-01-01T00:00:00.000Z",
                    "createdAt": "2026-01-01T00:00:00.000Z",
                    "author": repo.repo_id.split("/")[0],
                }
            )
            return True
        if action == "refs" and method == "GET":
            self._json(
                {
                    "branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": repo.head.sha}],
                    "converts": [],
                    "tags": [],
                    "pullRequests": [],
                }
            )
            return True
        if action == "preupload" and method == "POST":
            payload = json.loads(self._body() or b"{}")
            files = []
            for item in payload.get("files", []):
                sample = base64.b64decode(item.get("sample", ""))
                lfs = (
                    item["path"].lower().endswith(_LFS_SUFFIXES)
                    or item.get("size", 0) >= _LFS_MIN_SIZE
                    or b"\0" in sample
                )
                files.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
            self._json({"files": files, "commitOid": repo.head.sha})
            return True
        if action == "commit" and method == "POST":
            return self._commit(repo, self._body())
        if action == "tree" and method == "GET":
            revision, _, sub = tail.partition("/")
            commit = repo.at(revision)
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return True
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            entries = self._list_tree(commit, sub.strip("/"), recursive)
            if entries is None:
                self._error(404, "EntryNotFound", f"{sub} does not exist on {revision}")
                return True
            self._json(entries)
            return True
        if action == "paths-info" and method == "POST":
            commit = repo.at(tail)
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {tail}")
                return True
            body = self._body()
            if self.headers.get("Content-Type", "").startswith("application/json"):
                paths = json.loads(body or b"{}").get("paths", [])
            else:
                paths = parse_qs(body.decode()).get("paths", [])
            out = []
            for path in paths:
                path = path.strip("/")
                if path in commit.files:
                    out.append(commit.files[path].entry(path))
                elif any(name.startswith(path + "/") for name in commit.files) or path == "":
                    out.append({"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest()})
            self._json(out)
            return True
        return False

    def _list_tree(self, commit: _Commit, sub: str, recursive: bool) -> list | None:
        prefix = sub + "/" if sub else ""
        if sub and sub in commit.files:
            return None  # a file, not a folder
        names = [name for name in sorted(commit.files) if name.startswith(prefix)]
        if sub and not names:
            return None
        entries, folders = [], set()
        for name in names:
            rel = name[len(prefix) :]
            parts = rel.split("/")
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append(
                        {"type": "directory", "path": folder, "oid": hashlib.sha1(folder.encode()).hexdigest()}
                    )
            if recursive or len(parts) == 1:
                entries.append(commit.files[name].entry(name))
        return entries

    def _commit(self, repo: _Repo, body: bytes) -> bool:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        message = ""
        with self.state.lock:
            files = dict(repo.head.files)
            for item in lines:
                key, value = item.get("key"), item.get("value", {})
                if key == "header":
                    message = value.get("summary", "")
                    parent = value.get("parentCommit")
                    if parent and parent != repo.head.sha:
                        self._error(412, "PreconditionFailed", "parentCommit is not the head of main")
                        return True
                elif key == "file":
                    data = (
                        base64.b64decode(value["content"])
                        if value.get("encoding", "base64") == "base64"
                        else value["content"].encode()
                    )
                    files[value["path"]] = _Blob(data, False)
                elif key == "lfsFile":
                    oid = value["oid"]
                    if oid not in self.state.lfs_blobs:
                        self._error(422, "LfsObjectMissing", f"LFS object {oid} of {value['path']} was never uploaded")
                        return True
                    files[value["path"]] = _Blob(self.state.lfs_blobs[oid], True)
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    for name in [n for n in files if n.startswith(prefix)]:
                        del files[name]
            sha = self.state.new_sha(repo.repo_id)
            repo.commits.append(_Commit(sha, message, files))
        url = f"{self.base_url}/{_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{sha}"
        self._json({"commitUrl": url, "commitOid": sha, "pullRequestUrl": None})
        return True

    def _resolve(self, type_plural: str | None, repo_id: str, revision: str, path: str) -> bool:
        repo = self._repo(type_plural, repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository not found: {repo_id}")
            return True
        commit = repo.at(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return True
        blob = commit.files.get(path)
        if blob is None:
            self._json(
                {"error": f"Entry not found: {path}"},
                404,
                {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit.sha},
            )
            return True
        etag = blob.sha256 if blob.lfs else _git_blob_sha1(blob.data)
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(blob.data))})
        data = blob.data
        ranged = self.headers.get("Range")
        if ranged and ranged.startswith("bytes="):
            start_s, _, end_s = ranged[6:].split(",")[0].partition("-")
            if start_s:
                start, end = int(start_s), (int(end_s) if end_s else len(data) - 1)
            else:  # suffix range: last N bytes
                start, end = max(0, len(data) - int(end_s)), len(data) - 1
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            self._send(206, data[start : end + 1], headers, "application/octet-stream")
            return True
        self._send(200, data, headers, "application/octet-stream")
        return True


class FakeHub:
    """A fake Hugging Face Hub on ``http://127.0.0.1:<port>`` (context manager).

    Attributes:
        url (`str`): the endpoint to put in ``HF_ENDPOINT``.
        home (`str`): a fresh ``HF_HOME`` (cache, token) removed on exit.

    Use :meth:`env` for the environment of subprocesses that push or load, and :meth:`files` /
    :meth:`file_bytes` / :meth:`commits` to check what arrived.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._state = _HubState()
        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._server.hub_state = self._state  # type: ignore[attr-defined]
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._server.base_url = self.url  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None
        self.home: str | None = None

    def start(self) -> "FakeHub":
        self.home = tempfile.mkdtemp(prefix="fake_hf_home_")
        self._thread = threading.Thread(target=self._server.serve_forever, name="FakeHub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.home:
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def env(self, base: dict | None = None, **extra: str) -> dict:
        """Environment for a subprocess talking to this hub: ``os.environ`` (or ``base``) plus the hub variables."""
        env = dict(os.environ if base is None else base)
        for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN_PATH"):
            env.pop(key, None)
        env.update(
            {
                "HF_ENDPOINT": self.url,
                "HF_TOKEN": "hf_fake",
                "HF_HOME": self.home or tempfile.mkdtemp(prefix="fake_hf_home_"),
                "HF_HUB_DISABLE_XET": "1",
                "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost",
            }
        )
        env.update(extra)
        return env

    # ---------------------------------------------------------------- inspection
    def _repo(self, repo_id: str, repo_type: str) -> _Repo:
        try:
            return self._state.repos[(repo_type, repo_id)]
        except KeyError:
            known = sorted(f"{t}:{r}" for t, r in self._state.repos)
            raise KeyError(f"no {repo_type} repo {repo_id!r} on the fake hub (have: {known})") from None

    def repos(self) -> list[tuple[str, str]]:
        """All ``(repo_type, repo_id)`` pairs created so far."""
        return sorted(self._state.repos)

    def files(self, repo_id: str, repo_type: str = "model") -> dict[str, int]:
        """Files at the head of ``main``: path -> size in bytes."""
        return {path: len(blob.data) for path, blob in sorted(self._repo(repo_id, repo_type).head.files.items())}

    def file_bytes(self, repo_id: str, path: str, repo_type: str = "model") -> bytes:
        """Content of one file at the head of ``main``."""
        return self._repo(repo_id, repo_type).head.files[path].data

    def commits(self, repo_id: str, repo_type: str = "model") -> list[str]:
        """Commit messages of ``main``, oldest first."""
        return [commit.message for commit in self._repo(repo_id, repo_type).commits]

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every ``(method, path)`` the hub received, in order (for debugging)."""
        return list(self._state.requests)


__all__ = ["FakeHub", "USER"]
