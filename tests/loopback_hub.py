"""A stand-in for the Hugging Face hub and OpenAI's CLIP URL, on loopback, serving tiny files.

It speaks the hub's protocol as the downloader reads it: GET {url}/{owner}/{name}/resolve/{revision}/{file},
where revision is a branch ("main") or a commit; every answer names the commit (X-Repo-Commit);
a small file comes with its git blob id as ETag, an LFS file (weights, tokenizer.model) as a
302 to a content server with X-Linked-Etag (its sha256) and X-Linked-Size; ranges are honoured
(206, or 416 past the end). Hooks make it misbehave as a hostile or broken hub would.
"""
import hashlib
import http.server
import os
import threading

from zerocap import families

LFS = (".safetensors", ".bin", ".pt", ".model", ".h5", ".msgpack")


def blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Hub:
    def __init__(self, lm_dir=None, clip_file=None):
        self.repos = {}  # repo -> {"refs": {branch: commit}, "commits": {commit: {file: bytes}}}
        self.cdn = {}  # sha256 -> bytes
        self.files = {}  # plain paths (OpenAI's CLIP URL) -> bytes
        self.requests = []  # paths asked, in order
        self.tampered = {}  # (repo, file) -> bytes sent in place of the real ones (digests stay the real ones')
        self.extra = {}  # (repo, file) -> bytes sent past the size the hub declares (X-Linked-Size)
        self.cut = {}  # (repo, file) -> bytes sent before the connection is dropped
        self.no_digest = set()  # (repo, file): answered without X-Linked-Etag or ETag
        self.bare_416 = False  # a 416 with no headers at all
        if lm_dir is not None:
            self.serve_lm(lm_dir, families.DEFAULT.repo)
        if clip_file is not None:
            clip = open(clip_file, "rb").read()
            self.clip_sha = hashlib.sha256(clip).hexdigest()
            self.files[f"/clip/{self.clip_sha}/ViT-B-32.pt"] = clip
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                hub.requests.append(self.path)
                hub.answer(self)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a client that hung up (a cut download, a closed keep-alive connection)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    # ---- what it holds ----------------------------------------------------------------------
    def push(self, repo: str, files: dict, branch: str = "main") -> str:
        """A new commit of `repo` holding `files` ({name: bytes}); the branch moves to it."""
        r = self.repos.setdefault(repo, {"refs": {}, "commits": {}})
        commit = hashlib.sha1(repr((repo, len(r["commits"]), sorted(files))).encode()).hexdigest()
        r["commits"][commit] = dict(files)
        r["refs"][branch] = commit
        for name, data in files.items():
            if name.endswith(LFS):
                self.cdn[hashlib.sha256(data).hexdigest()] = data
        return commit

    def serve_lm(self, folder: str, repo: str, branch: str = "main") -> str:
        """Serve a model folder's files as a commit of the hub's repo `repo`."""
        return self.push(repo, {n: open(os.path.join(folder, n), "rb").read() for n in os.listdir(folder)
                                if os.path.isfile(os.path.join(folder, n))}, branch)

    def file(self, repo: str, name: str, revision: str = "main") -> bytes:
        r = self.repos[repo]
        return r["commits"][r["refs"].get(revision, revision)][name]

    def asked(self, since: int = 0) -> list:
        return self.requests[since:]

    # ---- answers ------------------------------------------------------------------------------
    def answer(self, h):
        path = h.path
        if path in self.files:
            return self.send(h, self.files[path], {})
        if path.startswith("/cdn/"):
            sha, _, key = path[5:].partition("?")
            data = self.cdn.get(sha)
            if data is None:
                return self.status(h, 404)
            repo, _, name = key.partition(":")
            return self.send(h, self.tampered.get((repo, name), data), {}, (repo, name))
        parts = path.lstrip("/").split("/", 4)
        if len(parts) != 5 or parts[2] != "resolve":
            return self.status(h, 404)
        repo, revision, name = f"{parts[0]}/{parts[1]}", parts[3], parts[4]
        r = self.repos.get(repo)
        commit = r and r["refs"].get(revision, revision if revision in r["commits"] else None)
        if commit is None:
            return self.status(h, 404, {"X-Error-Code": "RevisionNotFound" if r else "RepoNotFound"})
        files = r["commits"][commit]
        if name not in files:
            return self.status(h, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
        data = files[name]
        key = (repo, name)
        headers = {"X-Repo-Commit": commit}
        if name.endswith(LFS):
            sha = hashlib.sha256(data).hexdigest()
            if key not in self.no_digest:
                headers.update({"X-Linked-Etag": f'"{sha}"', "ETag": f'"{sha}"'})
            headers.update({"X-Linked-Size": str(len(data)), "Location": f"/cdn/{sha}?{repo}:{name}",
                            "Content-Length": "0"})
            return self.status(h, 302, headers)
        if key not in self.no_digest:
            headers["ETag"] = f'"{blob_id(data)}"'
        return self.send(h, self.tampered.get(key, data), headers, key)

    def status(self, h, code, headers=None):
        h.send_response(code)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            h.send_header("Content-Length", "0")
        h.end_headers()

    def send(self, h, data: bytes, headers: dict, key=None):
        data = data + self.extra.get(key, b"")
        start = 0
        rng = h.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                return self.status(h, 416, {} if self.bare_416 else {**headers, "Content-Range": f"bytes */{len(data)}"})
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        for k, v in headers.items():
            h.send_header(k, v)
        body = data[start:]
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if key in self.cut:
            h.wfile.write(body[:self.cut[key]])
            h.wfile.flush()
            h.close_connection = True
            import socket

            h.connection.shutdown(socket.SHUT_RDWR)
            return
        h.wfile.write(body)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
