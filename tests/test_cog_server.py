"""The real Cog server (coglet) over HTTP, on tiny random-weight models in the real formats."""
import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"beam_size": 2, "max_tokens": 2, "top_k": 16}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, timeout=120, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class Server:
    def __init__(self, env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"], cwd=ROOT,
            # coglet starts its worker with `python` from PATH: make that this interpreter
            env={**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
                 "COG_PREDICT_TYPE_STUB": "predict.py:Predictor", "PORT": str(self.port),
                 "ZEROCAP_DEVICE": "cpu", **env},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def health(self):
        try:
            return http("GET", self.url + "/health-check", timeout=5)[1]
        except (urllib.error.URLError, ConnectionError, OSError):
            return None

    def wait(self, until=("READY", "SETUP_FAILED"), timeout=180):
        deadline = time.time() + timeout
        while time.time() < deadline:
            h = self.health()
            if h and h.get("status") in until:
                return h
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            time.sleep(0.5)
        raise TimeoutError("server did not become ready")

    def request(self, method, path, body, **kw):
        # A container runs one prediction at a time, and coglet frees the slot just after it
        # answers: a request sent right after a response can get 409 "At capacity", which a
        # client retries (3 of 60 back-to-back requests on a 2-core machine like CI's).
        deadline = time.time() + 30
        while True:
            status, out = http(method, self.url + path, body, **kw)
            if status != 409 or time.time() > deadline:
                return status, out
            time.sleep(0.1)

    def predict(self, **inputs):
        return self.request("POST", "/predictions", {"input": inputs})[1]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def data_uri(path_or_bytes, mime="image/png"):
    data = open(path_or_bytes, "rb").read() if isinstance(path_or_bytes, str) else path_or_bytes
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def server(weights_root):
    s = Server({"ZEROCAP_WEIGHTS": weights_root, "ZEROCAP_OFFLINE": "1"})
    try:
        assert s.wait()["status"] == "READY"
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def uris(images):
    return [data_uri(p) for p in images]


def assert_output(out, mode, cond_text, n):
    assert out["status"] == "succeeded", out.get("error")
    o = out["output"]
    assert o["mode"] == mode and o["cond_text"] == cond_text
    assert len(o["beams"]) == len(o["beam_scores"]) == len(o["clip_scores"]) == len(o["perplexities"]) == n
    assert o["caption"] == o["beams"][0] and all(b.startswith(cond_text) for b in o["beams"])
    assert o["beam_scores"] == sorted(o["beam_scores"], reverse=True)
    assert o["best_clip"] in o["beams"] and o["best_fluency"] in o["beams"]
    assert o["tokens"] >= 1 and o["seconds"] > 0
    assert out["metrics"]["tokens_generated"] == o["tokens"]
    assert {"seconds_per_token", "total_seconds"} <= set(out["metrics"])
    assert "token 1/" in out["logs"]  # per-token progress in the prediction logs


@pytest.mark.parametrize("mode,cond_text", [("caption", "Image of a"), ("knowledge", "Image of"),
                                            ("ocr", "Image of text that says")])
def test_single_image_modes(server, uris, mode, cond_text):
    assert_output(server.predict(mode=mode, image=uris[0], **SMALL), mode, cond_text, 2)


def test_arithmetic_three_images_one_one_minus_one(server, uris):
    out = server.predict(mode="arithmetic", images=uris[:3], image_weights=[1, 1, -1], **SMALL)
    assert_output(out, "arithmetic", "Image of a", 2)
    assert out["output"]["target"].count("x image") == 3 and "-1 x image" in out["output"]["target"]


def test_arithmetic_with_texts_and_own_prompt(server, uris):
    out = server.predict(mode="arithmetic", images=uris[:1], texts=["a crown"], text_weights=[0.5],
                         cond_text="A picture of", **SMALL)
    assert_output(out, "arithmetic", "A picture of", 2)


def truncated_png(images):
    buf = io.BytesIO()
    Image.open(images[0]).resize((300, 300)).save(buf, format="PNG")
    return buf.getvalue()[:2000]


def bomb_png():
    buf = io.BytesIO()
    Image.new("1", (10_000, 9_000)).save(buf, format="PNG")
    return buf.getvalue()


BAD = [
    ({"mode": "arithmetic", "image": 0}, "mode arithmetic takes `images`"),
    ({"mode": "caption"}, "mode caption needs `image`"),
    ({"mode": "caption", "image": 0, "images": [0, 1]}, "images are for mode=arithmetic"),
    ({"mode": "arithmetic", "images": [0, 1, 2], "image_weights": [1, 1]}, "got 3 image(s) but 2 image_weights"),
    ({"mode": "arithmetic", "images": [0, 0], "image_weights": [1, -1]}, "(nearly) zero"),
    ({"mode": "arithmetic", "images": [0], "image_weights": [50]}, "image_weights must be finite numbers in [-10, 10], got 50"),
    ({"image": "text"}, "not an image"),
    ({"image": "truncated"}, "truncated or corrupt"),
    ({"image": "bomb"}, "decompression bomb"),
    ({"image": 0, "beam_size": 50}, "beam_size must be between 1 and 20, got 50"),
    ({"image": 0, "end_factor": 5.0}, "end_factor must be between 0.5 and 2.0, got 5.0"),
    ({"image": 0, "mode": "poem"}, "mode must be one of caption, knowledge, ocr, arithmetic"),
    ({"image": 0, "beam_size": 5, "top_k": 3}, "beam_size (5) must not exceed top_k (3)"),
    ({"image": 0, "cond_text": "a " * 100}, "cond_text is too long for CLIP"),
    ({"image": 0, "cond_text": "x" * 400}, "cond_text is 400 characters long; at most 300"),
]


@pytest.mark.parametrize("inputs,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_fails_that_prediction_only(server, uris, images, inputs, message):
    special = {"text": data_uri(b"hello, not an image", "text/plain"),
               "truncated": data_uri(truncated_png(images)), "bomb": data_uri(bomb_png())}
    resolve = lambda v: special[v] if isinstance(v, str) else uris[v]  # noqa: E731
    inputs = {k: ([resolve(x) for x in v] if k == "images" else resolve(v)) if k in ("image", "images") else v
              for k, v in inputs.items()}
    out = server.predict(**{**SMALL, **inputs})
    assert out["status"] == "failed"
    assert message in out["error"]
    assert server.wait(until=("READY",), timeout=20)["status"] == "READY"  # the server goes on


def test_still_serving_after_bad_inputs(server, uris):
    server.predict(image="not a uri")
    assert_output(server.predict(image=uris[1], **SMALL), "caption", "Image of a", 2)


def test_cancel_stops_the_prediction_and_the_server_goes_on(server, uris):
    pid = "cancel-me"
    status, body = server.request("PUT", f"/predictions/{pid}", {"input": {"image": uris[2], "max_tokens": 40}},
                                  timeout=10, headers={"Prefer": "respond-async"})
    assert status == 202, body
    time.sleep(2.0)  # setup done, decoding under way
    assert server.health()["status"] == "BUSY"
    status, _ = http("POST", f"{server.url}/predictions/{pid}/cancel", timeout=10)
    assert status == 200
    deadline = time.time() + 60
    while time.time() < deadline and server.health()["status"] != "READY":
        time.sleep(0.2)
    assert server.health()["status"] == "READY"
    assert time.time() < deadline
    assert_output(server.predict(image=uris[0], **SMALL), "caption", "Image of a", 2)


def test_setup_fails_with_a_clear_message_when_weights_are_missing_offline(tmp_path):
    s = Server({"ZEROCAP_WEIGHTS": str(tmp_path / "nothing"), "ZEROCAP_OFFLINE": "1"})
    try:
        h = s.wait()
        assert h["status"] == "SETUP_FAILED"
        assert "model weights missing" in h["setup"]["logs"]
        assert "script/download-weights" in h["setup"]["logs"]
    finally:
        s.stop()


def hub_env(hub, root):
    return {"ZEROCAP_WEIGHTS": root, "ZEROCAP_OFFLINE": "", "HF_HUB_OFFLINE": "", "HF_ENDPOINT": hub.url,
            "ZEROCAP_CLIP_URL": f"{hub.url}/clip/{hub.clip_sha}/ViT-B-32.pt"}


def test_setup_downloads_missing_weights_then_serves(tmp_path, lm_dir, clip_file, uris):
    from loopback_hub import Hub

    hub = Hub(lm_dir, clip_file)
    s = Server(hub_env(hub, str(tmp_path / "w")))
    try:
        assert s.wait()["status"] == "READY"
        assert (tmp_path / "w" / "manifest.json").exists()
        assert_output(s.predict(image=uris[0], **SMALL), "caption", "Image of a", 2)
    finally:
        s.stop()
        hub.close()


def test_setup_rejects_a_corrupted_download(tmp_path, lm_dir, clip_file):
    from loopback_hub import Hub

    hub = Hub(lm_dir, clip_file)
    key = f"/clip/{hub.clip_sha}/ViT-B-32.pt"
    hub.files[key] = hub.files[key][:-4] + b"oops"
    s = Server(hub_env(hub, str(tmp_path / "w")))
    try:
        h = s.wait()
        assert h["status"] == "SETUP_FAILED"
        assert "checksum mismatch" in h["setup"]["logs"] and "download failed" in h["setup"]["logs"]
    finally:
        s.stop()
        hub.close()
