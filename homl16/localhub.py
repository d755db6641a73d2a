"""A local Hugging Face hub: serves a folder over HTTP so that ``HF_ENDPOINT`` can point at it.

The folder holds one directory per repository revision::

    ROOT/models/<org>/<name>/<revision>/<files...>     (or ROOT/models/<name>/<revision>/... for a bare id)
    ROOT/datasets/<org>/<name>/<revision>/<files...>

With ``HF_ENDPOINT=http://127.0.0.1:PORT``, ``huggingface_hub`` (and through it transformers'
``from_pretrained`` and ``pipeline``, and datasets' ``load_dataset``) downloads from it as from the hub.
It answers the calls those libraries make: repository info (``/api/{models,datasets}/<id>[/revision/<rev>]``),
file listings (``.../tree/<rev>[/<dir>]``, ``POST .../paths-info/<rev>``), ``.../refs``, and the files
themselves (``HEAD``/``GET /[datasets/]<id>/resolve/<rev>/<file>``, with the commit, ETag and size headers
``huggingface_hub`` reads). A revision's commit hash is a digest of its files, so it changes with them.

    python -m homl16.localhub ROOT [--port N] [--host H]     # serve a hub folder, e.g. to a room
"""

import argparse
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

KINDS = {"models": "model", "datasets": "dataset"}
API_ACTIONS = {"revision", "tree", "paths-info", "refs"}


class Hub:
    """The repositories under ``root``, with cached digests: what the request handler serves."""

    def __init__(self, root):
        self.root = Path(root)
        self.requested = []  # (kind, repo id) of every request that named an existing repository, in order
        self._digests = {}  # file path -> (size, mtime, sha256)
        self._lock = threading.Lock()

    def revision_dir(self, kind, repo_id, revision):
        """The folder of ``repo_id`` at ``revision`` (a branch name or a commit hash), or None."""
        repo = self.root / f"{kind}s" / repo_id
        if not revision or ".." in revision.split("/") or not repo.is_dir():
            return None
        if (repo / revision).is_dir():
            return repo / revision
        return next((d for d in self.revisions(repo) if self.commit(d) == revision), None)

    def repos(self):
        """{repo id: "model" or "dataset"} of every repository in the folder. A folder whose subfolders hold
        files directly (revisions) is a bare id (``bert-base-uncased``); else it holds ``org/name`` ids."""
        found = {}
        for kinds, kind in KINDS.items():
            for top in sorted(p for p in (self.root / kinds).glob("*") if p.is_dir()):
                revisions = [revision for revision in top.iterdir() if revision.is_dir()]
                if any(f.is_file() for revision in revisions for f in revision.iterdir()):
                    found[top.name] = kind
                else:
                    found.update({f"{top.name}/{repo.name}": kind for repo in top.iterdir() if repo.is_dir()})
        return found

    @staticmethod
    def revisions(repo):
        return sorted(d for d in repo.iterdir() if d.is_dir())

    def exists(self, kind, repo_id):
        safe = bool(repo_id) and ".." not in repo_id.split("/")
        return safe and (self.root / f"{kind}s" / repo_id).is_dir()

    def sha256(self, path):
        """sha256 of the file at ``path``, computed once per size and modification time."""
        stat = path.stat()
        with self._lock:
            cached = self._digests.get(path)
        if cached and cached[:2] == (stat.st_size, stat.st_mtime_ns):
            return cached[2]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        with self._lock:
            self._digests[path] = (stat.st_size, stat.st_mtime_ns, digest)
        return digest

    def files(self, folder):
        """Paths (posix, relative to ``folder``) of every file under it, sorted."""
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    def commit(self, folder):
        """A 40-hex commit hash for a revision folder: a digest of its file names and contents."""
        h = hashlib.sha1()
        for name in self.files(folder):
            h.update(f"{name}\0{self.sha256(folder / name)}\n".encode())
        return h.hexdigest()

    def entry(self, folder, path):
        """The tree/paths-info entry of ``path`` (relative to the revision ``folder``), as the hub has it."""
        target = folder / path
        if target.is_dir():
            return {"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest()}
        size, digest = target.stat().st_size, self.sha256(target)
        return {"type": "file", "path": path, "size": size, "oid": digest[:40],
                "lfs": {"oid": digest, "size": size, "pointerSize": 134}}

    def info(self, repo_id, folder):
        """The repository info json: id, sha, and the siblings (its files)."""
        return {"id": repo_id, "sha": self.commit(folder), "private": False, "gated": False,
                "siblings": [{"rfilename": name} for name in self.files(folder)], "tags": [], "cardData": {}}

    def tree(self, folder, path, recursive):
        """Entries under ``path`` of a revision folder (all depths when ``recursive``)."""
        base = folder / path if path else folder
        children = base.rglob("*") if recursive else base.iterdir()
        return [self.entry(folder, p.relative_to(folder).as_posix()) for p in sorted(children)]

    def refs(self, kind, repo_id):
        repo = self.root / f"{kind}s" / repo_id
        branches = [{"name": d.name, "ref": f"refs/heads/{d.name}", "targetCommit": self.commit(d)}
                    for d in self.revisions(repo)]
        return {"branches": branches, "converts": [], "tags": [], "pullRequests": []}


class Handler(BaseHTTPRequestHandler):
    """Routes hub requests to ``self.server.hub``; anything else is a 404."""

    protocol_version = "HTTP/1.1"

    def do_HEAD(self):
        self.route(send_body=False)

    def do_GET(self):
        self.route(send_body=True)

    def do_POST(self):
        # read the body first, so that an early error answer leaves a kept-alive connection clean
        self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        self.route(send_body=True)

    def route(self, send_body):
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if parts[:1] == ["api"] and len(parts) >= 3 and parts[1] in KINDS:
            self.api(KINDS[parts[1]], parts[2:], query, send_body)
        elif "resolve" in parts:
            at = parts.index("resolve")
            kind, id_parts = ("dataset", parts[1:at]) if parts[:1] == ["datasets"] else ("model", parts[:at])
            rest = parts[at + 1:]
            self.resolve(kind, "/".join(id_parts), rest[0] if rest else "", "/".join(rest[1:]), send_body)
        else:
            self.error(404, "RepoNotFound", f"no such route: {url.path}")

    def api(self, kind, parts, query, send_body):
        hub = self.server.hub
        split = 2 if len(parts) >= 2 and parts[1] not in API_ACTIONS else 1  # "org/name" or a bare "name"
        repo_id, action, args = "/".join(parts[:split]), parts[split:split + 1], parts[split + 1:]
        if not hub.exists(kind, repo_id):
            return self.error(404, "RepoNotFound", f"{kind} {repo_id} not found")
        hub.requested.append((kind, repo_id))
        if action == ["refs"]:
            return self.json(hub.refs(kind, repo_id), send_body)
        revision = args[0] if args else "main"
        folder = hub.revision_dir(kind, repo_id, revision)
        if folder is None:
            return self.error(404, "RevisionNotFound", f"{repo_id} has no revision {revision}")
        if not action or action == ["revision"]:
            return self.json(hub.info(repo_id, folder), send_body)
        if action == ["tree"]:
            path = "/".join(args[1:])
            if path and (".." in path.split("/") or not (folder / path).is_dir()):
                return self.error(404, "EntryNotFound", f"{path} is not a folder of {repo_id}")
            recursive = query.get("recursive", "").lower() in ("1", "true")
            return self.json(hub.tree(folder, path, recursive), send_body)
        if action == ["paths-info"] and self.command == "POST":
            paths = self.posted_paths()
            return self.json([hub.entry(folder, p) for p in paths
                              if ".." not in p.split("/") and (folder / p).exists()], send_body)
        self.error(404, "EntryNotFound", f"unknown action {action} for {repo_id}")

    def posted_paths(self):
        """The ``paths`` of a paths-info request (form-encoded, as huggingface_hub sends them, or json)."""
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(self.body or "{}").get("paths", [])
            return [paths] if isinstance(paths, str) else paths
        return parse_qs(self.body).get("paths", [])

    def resolve(self, kind, repo_id, revision, filename, send_body):
        hub = self.server.hub
        if not hub.exists(kind, repo_id):
            return self.error(404, "RepoNotFound", f"{kind} {repo_id} not found")
        hub.requested.append((kind, repo_id))
        folder = hub.revision_dir(kind, repo_id, revision)
        if folder is None:
            return self.error(404, "RevisionNotFound", f"{repo_id} has no revision {revision}")
        path = folder / filename
        if not filename or ".." in filename.split("/") or not path.is_file():
            return self.error(404, "EntryNotFound", f"{filename} not found in {repo_id}@{revision}")
        data = path.read_bytes()
        start, end = self.byte_range(len(data))
        self.send_response(206 if (start, end) != (0, len(data)) else 200)
        self.send_header("X-Repo-Commit", hub.commit(folder))
        self.send_header("ETag", f'"{hub.sha256(path)}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        if (start, end) != (0, len(data)):
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if send_body:
            self.wfile.write(data[start:end])

    def byte_range(self, size):
        """(start, end) of the requested ``Range: bytes=a-b`` (end exclusive); the whole file without one."""
        spec = self.headers.get("Range", "")
        if not spec.startswith("bytes=") or "," in spec:
            return 0, size
        first, _, last = spec[6:].partition("-")
        if not first:  # a suffix: the last N bytes
            return max(0, size - int(last)), size
        return min(int(first), size), min(int(last) + 1 if last else size, size)

    def json(self, payload, send_body):
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def error(self, status, code, message):
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format, *args):
        if self.server.verbose:
            super().log_message(format, *args)


def make_server(root, host="127.0.0.1", port=0, verbose=False):
    """A ``ThreadingHTTPServer`` serving the hub folder ``root`` (not started); ``server.hub.requested``
    lists the (kind, repo id) each request named."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"root must be a hub folder (with models/ and/or datasets/), got {str(root)!r}")
    if not any((root / kinds).is_dir() for kinds in KINDS):
        raise ValueError(f"{root} has neither models/ nor datasets/: not a hub folder")
    if not isinstance(port, int) or not 0 <= port < 65536:
        raise ValueError(f"port must be an int in 0..65535 (0: any free port), got {port!r}")
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.hub, server.verbose = Hub(root), verbose
    return server


def serve(root, host="127.0.0.1", port=0):
    """Serve the hub folder ``root`` from a daemon thread; returns ``(server, url)``, url for ``HF_ENDPOINT``.

    ``server.hub.requested`` lists the (kind, repo id) pairs requested so far; ``server.shutdown()`` stops it.
    """
    server = make_server(root, host, port)
    threading.Thread(target=server.serve_forever, daemon=True, name="homl16-localhub").start()
    return server, f"http://{host}:{server.server_address[1]}"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m homl16.localhub", description=__doc__.split("\n")[0])
    parser.add_argument("root", help="hub folder: ROOT/models/<id>/<revision>/..., ROOT/datasets/...")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: the whole room)")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    server = make_server(args.root, args.host, args.port, verbose=True)
    address = f"http://{args.host}:{server.server_address[1]}"
    print(f"Serving {len(server.hub.repos())} repositories from {args.root} at {address} "
          f"(learners set HF_ENDPOINT to it, with this machine's name or IP); Ctrl-C stops.", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
