"""A stand-in for the Hugging Face hub and OpenAI's CLIP URL, on loopback, serving tiny files."""
import hashlib
import http.server
import os
import threading

from zerocap import families


class Hub:
    """Serves /<repo>/resolve/main/<file> (LFS-style X-Linked-Etag) and /clip/<sha256>/ViT-B-32.pt."""

    def __init__(self, lm_dir, clip_file):
        self.files, self.etags, self.requests = {}, {}, []
        self.serve_lm(lm_dir, families.DEFAULT.repo)
        clip = open(clip_file, "rb").read()
        self.clip_sha = hashlib.sha256(clip).hexdigest()
        self.files[f"/clip/{self.clip_sha}/ViT-B-32.pt"] = clip
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hub.requests.append(self.path)
                data = hub.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                if self.path in hub.etags:
                    self.send_header("X-Linked-Etag", f'"{hub.etags[self.path]}"')
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def serve_lm(self, lm_dir, repo):
        """Serve the files of a Hugging Face model folder as the hub's repo `repo`."""
        for name in os.listdir(lm_dir):
            data = open(os.path.join(lm_dir, name), "rb").read()
            path = f"/{repo}/resolve/main/{name}"
            self.files[path] = data
            if name == "model.safetensors":
                self.etags[path] = hashlib.sha256(data).hexdigest()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
