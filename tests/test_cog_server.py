"""The real Cog server (coglet) over HTTP, on tiny random-weight models in the real formats.

`server` runs as a built image does: from the repository, whose .cog/openapi_schema.json (the
schema `cog build` generates, checked by test_cog_schema.py) makes coglet validate every request.
`bare_server` runs without it (a server started by hand), where only predict.py's own checks
stand. The predictor's answers to each bad input are tested directly in test_predictor.py; here
a few real round trips show they reach the client, and the server stays up.
"""
import base64
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"beam_size": 2, "max_tokens": 2, "top_k": 16}
RULE = "send the file as a URL (https://...) or a data URL (data:image/png;base64,...); files on the server are not read"


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


def image_concurrency() -> int:
    """The slots a built image has: `cog build` reads run()'s @cog.concurrent(max=N) literal (cog's
    static parser) and bakes ENV COG_MAX_CONCURRENCY=N into the image; coglet reads that."""
    found = re.findall(r"@cog\.concurrent\(max=(\d+)\)", open(os.path.join(ROOT, "predict.py")).read())
    assert len(found) == 1, found
    return int(found[0])


def image_environment() -> dict[str, str]:
    """cog.yaml's `environment:` (KEY=VALUE lines): `cog build` writes them as the image's ENV."""
    import yaml

    lines = yaml.safe_load(open(os.path.join(ROOT, "cog.yaml"))).get("environment") or []
    return dict(line.split("=", 1) for line in lines)


class Server:
    def __init__(self, env, cwd=ROOT):
        self.log = tempfile.NamedTemporaryFile(prefix="coglet-", suffix=".log", delete=False)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # coglet starts its worker with `python` from PATH: make that this interpreter; and it gets
        # the image's ENV (COG_MAX_CONCURRENCY, cog.yaml's environment), as `docker run` would. A
        # value None in env: that variable unset.
        environ = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
                   "COG_PREDICT_TYPE_STUB": "predict.py:Predictor", "PORT": str(self.port), "ZEROCAP_DEVICE": "cpu",
                   "COG_MAX_CONCURRENCY": str(image_concurrency()), **image_environment(), **env}
        self.proc = subprocess.Popen([sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"], cwd=cwd,
                                     env={k: v for k, v in environ.items() if v is not None},
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def log_tail(self, n: int = 4000) -> str:
        """The server's last output, for a failing assertion's message."""
        self.log.flush()
        with open(self.log.name, "rb") as f:
            return f.read()[-n:].decode(errors="replace")

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
            time.sleep(0.2)
        raise TimeoutError(f"server did not reach {until}")

    def request(self, method, path, body, **kw):
        """No retry: with the image's slots and the scheduler, a client never gets 409."""
        return http(method, self.url + path, body, **kw)

    def predict(self, **inputs):
        return self.request("POST", "/predictions", {"input": inputs})[1]

    def worker(self) -> int:
        """The pid of the Python worker that runs setup() and run()."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(out) == 1, out
        return int(out[0])

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        os.remove(self.log.name)


def data_uri(path_or_bytes, mime="image/png"):
    data = open(path_or_bytes, "rb").read() if isinstance(path_or_bytes, str) else path_or_bytes
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(weights_root):
    assert os.path.isfile(os.path.join(ROOT, ".cog", "openapi_schema.json"))
    s = Server({"ZEROCAP_WEIGHTS": weights_root, "ZEROCAP_OFFLINE": "1"})
    try:
        assert s.wait()["status"] == "READY"
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def bare_server(weights_root, tmp_path_factory):
    d = tmp_path_factory.mktemp("bare")  # predict.py without .cog/openapi_schema.json beside it
    os.symlink(os.path.join(ROOT, "predict.py"), d / "predict.py")
    s = Server({"ZEROCAP_WEIGHTS": weights_root, "ZEROCAP_OFFLINE": "1"}, cwd=str(d))
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


def assert_failed(server, out, message):
    assert out["status"] == "failed" and message in out["error"], out.get("error")
    assert server.wait(until=("READY",), timeout=20)["status"] == "READY"  # the server goes on


@pytest.mark.parametrize("mode,cond_text", [("caption", "Image of a"), ("knowledge", "Image of"),
                                            ("ocr", "Image of text that says")])
def test_single_image_modes(server, uris, mode, cond_text):
    assert_output(server.predict(mode=mode, image=uris[0], **SMALL), mode, cond_text, 2)


def test_arithmetic_three_images_one_one_minus_one(server, uris):
    out = server.predict(mode="arithmetic", images=uris[:3], image_weights=[1, 1, -1], **SMALL)
    assert_output(out, "arithmetic", "Image of a", 2)
    assert out["output"]["target"] == "+1 x image 1 +1 x image 2 -1 x image 3"


def test_arithmetic_with_texts_and_own_prompt(server, uris):
    out = server.predict(mode="arithmetic", image=uris[0], texts=["a crown"], text_weights=[0.5],
                         cond_text="A picture of", **SMALL)
    assert_output(out, "arithmetic", "A picture of", 2)


@pytest.mark.parametrize("inputs,field,message", [
    ({"beam_size": 50}, "beam_size", "50 is greater than the maximum of 20"),
    ({"beam_size": "x"}, "beam_size", '"x" is not of type "integer"'),
    ({"mode": "poem"}, "mode", '"poem" is not one of'),
    ({"texts": "a crown"}, "texts", '"a crown" is not of type "array"'),
    ({"image_weights": [1, "a"]}, "image_weights/1", '"a" is not of type "number"'),
])
def test_the_generated_schema_refuses_what_it_declares(server, uris, inputs, field, message):
    status, body = server.request("POST", "/predictions", {"input": {"image": uris[0], **SMALL, **inputs}})
    assert status == 422
    assert any(d["loc"][-1] == field and message in d["msg"] for d in body["detail"]), body


@pytest.mark.slow  # a second server, without the schema
@pytest.mark.parametrize("inputs,message", [
    ({"beam_size": 50}, "beam_size must be an integer from 1 to 20, got 50"),
    ({"beam_size": "x"}, 'beam_size must be an integer from 1 to 20, got "x"'),
    ({"texts": "a crown", "mode": "arithmetic"}, 'texts must be a list of values, each a string; got the single'),
    ({"bogus": 1}, "unknown input bogus; the inputs are: mode, method, image, images,"),
    ({"image": "/etc/hostname"}, "image: " + RULE),
])
def test_a_server_without_the_schema_answers_in_words(bare_server, uris, inputs, message):
    out = bare_server.predict(**{"image": uris[0], **SMALL, **inputs})
    assert_failed(bare_server, out, message)
    assert "TypeError" not in out["error"] and "Traceback" not in out["error"]


def test_the_readmes_failure_example_and_data_url_target_are_what_the_server_says(bare_server, uris):
    """The README quotes a failed prediction's error and names a data URL's target: both as the
    real server gives them (the async run once said 'Async prediction failed')."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    example = re.search(r"`(Prediction failed: [^`]*beam_size must be [^`]*got 50)`", readme).group(1)
    out = bare_server.predict(image=uris[0], **{**SMALL, "beam_size": 50})
    assert out["status"] == "failed" and out["error"] == example, (out.get("error"), example)
    target = re.search(r"\| `target` \| what was captioned: the file name as sent \((\S*) for a data URL",
                       readme).group(1)
    ok = bare_server.predict(image=uris[0], **SMALL)
    assert ok["status"] == "succeeded" and f'"{ok["output"]["target"]}"' == target, (ok["output"]["target"], target)


def truncated_png(images):
    return png(Image.open(images[0]).resize((300, 300)))[:2000]


@pytest.mark.parametrize("image,message", [
    (data_uri(b"hello, not an image", "text/plain"), "not an image: image (use JPEG"),
    ("truncated", "cannot read image image: it is truncated or corrupt"),
    (data_uri(png(Image.new("1", (10_000, 9_000)))), "image too large: image has 90,000,000 pixels (10000x9000);"
                                                     " at most 80,000,000 pixels (80 MP) are accepted"),
    ("/etc/hostname", "image: " + RULE),
    ("/no/such/file.png", "image: " + RULE),
], ids=["not an image", "truncated", "decompression bomb", "server file", "missing server file"])
def test_bad_files_fail_that_prediction_only(server, images, image, message):
    out = server.predict(image=data_uri(truncated_png(images)) if image == "truncated" else image, **SMALL)
    assert_failed(server, out, message)


def test_sixteen_bit_greyscale_is_captioned_as_its_eight_bit_equivalent(server):
    grey = np.linspace(0, 65535, 48 * 40).reshape(40, 48).astype(np.uint16)
    eight = Image.fromarray(np.rint(grey / 257).astype(np.uint8))
    a = server.predict(image=data_uri(png(Image.fromarray(grey))), **SMALL)
    b = server.predict(image=data_uri(png(eight)), **SMALL)
    assert a["status"] == b["status"] == "succeeded"
    assert a["output"]["beams"] == b["output"]["beams"] and a["output"]["clip_scores"] == b["output"]["clip_scores"]


def peak_rss_mb(pid) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def test_a_long_thin_image_takes_bounded_memory(server, uris):
    """1 x 400,000 pixels, ~1 kB as a PNG: CLIP's preprocessing alone would scale it to gigabytes."""
    assert server.predict(image=uris[1], **SMALL)["status"] == "succeeded"  # the worker's steady peak
    before = peak_rss_mb(server.worker())
    thin = png(Image.new("RGB", (400_000, 1), (200, 30, 30)))
    assert len(thin) < 4000
    out = server.predict(image=data_uri(thin), **SMALL)
    assert out["status"] == "succeeded", out.get("error")
    assert peak_rss_mb(server.worker()) - before < 300


@pytest.mark.slow
def test_the_health_check_reports_a_dead_worker(weights_root):
    """A worker killed (out of memory, a driver fault) leaves coglet up but unable to predict; the
    health check says so, for a restart policy or liveness probe to act on (see README)."""
    s = Server({"ZEROCAP_WEIGHTS": weights_root, "ZEROCAP_OFFLINE": "1"})
    try:
        assert s.wait()["status"] == "READY"
        os.kill(s.worker(), 9)
        h = s.wait(until=("UNHEALTHY", "DEFUNCT"), timeout=30)
        assert h["status"] in ("UNHEALTHY", "DEFUNCT")
    finally:
        s.stop()


@pytest.mark.slow
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


@pytest.mark.slow
def test_setup_downloads_missing_weights_then_serves(tmp_path, lm_dir, clip_file, uris):
    from loopback_hub import Hub

    hub = Hub(lm_dir, clip_file)
    s = Server(hub_env(hub, str(tmp_path / "w")))
    try:
        h = s.wait()
        assert h["status"] == "READY", h["setup"]["logs"]
        assert "downloading" in h["setup"]["logs"]  # a user sees why setup waits
        assert (tmp_path / "w" / "manifest.json").exists()
        assert_output(s.predict(image=uris[0], **SMALL), "caption", "Image of a", 2)
    finally:
        s.stop()
        hub.close()


@pytest.mark.slow
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


def test_video_mode(server, images, tmp_path):
    av = pytest.importorskip("av")
    path = str(tmp_path / "clip.mkv")
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in images[:2]]
    with av.open(path, "w") as c:
        s = c.add_stream("ffv1", rate=4)
        s.height, s.width, s.pix_fmt = frames[0].shape[0], frames[0].shape[1], "bgr0"
        for i in range(8):
            for packet in s.encode(av.VideoFrame.from_ndarray(frames[i // 4], format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    out = server.predict(mode="video", video=data_uri(path, "video/x-matroska"), frames=4, **SMALL)
    assert_output(out, "video", "Image of a", 2)
    assert out["output"]["frame_times"] == [0.25, 0.75, 1.25, 1.75] and out["output"]["target"] == "video"
    bad = server.predict(mode="video", video=data_uri(b"\x00\x00\x00\x18ftypmp42 truncated", "video/mp4"), **SMALL)
    assert_failed(server, bad, "video")
    assert "InputError" in bad["error"] and "Traceback" not in bad["error"]


# ---- many clients at once: the scheduler decodes their predictions together (continuous batching) ----
BURST = {"beam_size": 3, "top_k": 48, "max_tokens": 6}


def worker_rss_mb(server) -> float:
    with open(f"/proc/{server.worker()}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


BAD_IMAGE = "data:image/png;base64,AAAA"  # not an image: that prediction fails, in words (HTTP 200)


def released_together(server, body, n: int) -> list[int]:
    """n POSTs of body released together by a barrier, so that they reach coglet in one instant;
    their HTTP statuses."""
    barrier, out = threading.Barrier(n), [None] * n

    def send(i):
        barrier.wait()
        out[i] = http("POST", server.url + "/predictions", body, timeout=60)[0]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def burst(server, bodies, headers=None, retry=True):
    """Send every body at once, each on its own connection; [(status, answer)] in order. A 409 is
    retried after a second, as the README tells clients to (coglet 0.23 can answer 409 while a
    slot's return lags, under load; test_back_to_back_clients_never_get_409 holds the slots to
    their count); one that stays 409 for 30 s is returned as it is. retry=False: the first answers."""
    out = [None] * len(bodies)

    def send(i):
        for _ in range(30 if retry else 1):
            out[i] = http("POST", server.url + "/predictions", bodies[i], timeout=300, headers=headers)
            if out[i][0] != 409 or not retry:
                return
            time.sleep(1.0)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_back_to_back_clients_never_get_409(server, uris):
    """Each request sent the moment the previous answer arrives (a client's loop, a queue's worker),
    100 in a row, successes and failures alternating: the image's slots always have one free."""
    bad = BAD_IMAGE
    answers = [http("POST", server.url + "/predictions", {"input": {"image": bad if i % 2 else uris[i % 4], **SMALL}})
               for i in range(100)]
    assert [s for s, _ in answers] == [200] * 100
    assert [o["status"] for _, o in answers] == ["succeeded", "failed"] * 50


def test_predictions_asking_for_a_slot_in_one_instant_never_get_409(server):
    """Two predictions released together by a barrier, 150 rounds, 16 slots: never 409. coglet 0.23
    refuses a prediction whose slot request meets another's on a second tokio thread (its pool's
    try_acquire takes its lock with try_lock), however many slots are free; cog.yaml's
    TOKIO_WORKER_THREADS=1 gives it one thread. Without it, 54 of 300 such rounds got a 409 on 2
    CPUs (bench/served.py --probe --clients 2; README: concurrency)."""
    body = {"input": {"image": BAD_IMAGE, **SMALL}}  # fails at once, in words
    statuses = [status for _ in range(150) for status in released_together(server, body, 2)]
    assert statuses == [200] * 300, {s: statuses.count(s) for s in set(statuses)}


def test_a_burst_all_succeeds_together_faster_with_the_captions_each_gets_alone(server, uris):
    """8 at once: no 409, each the caption it gets alone, the batch shared (metrics), the server
    READY after and its memory back where it was. How much sooner than one at a time is the
    benchmark's (bench/served.py): a ratio of times fails on a shared machine, not in the code."""
    bodies = [{"input": {"image": uris[i % 4], **BURST, "cond_text": ["Image of a", "A photo of"][i % 2]}}
              for i in range(8)]
    before = worker_rss_mb(server)
    alone = [http("POST", server.url + "/predictions", b, timeout=300) for b in bodies]
    together = burst(server, bodies)
    assert [s for s, _ in together] == [200] * 8, ([o for _, o in together], server.log_tail())
    for (_, a), (_, b) in zip(alone, together):
        assert a["status"] == b["status"] == "succeeded", (a.get("error"), b.get("error"), server.log_tail())
        assert a["output"]["beams"] == b["output"]["beams"]  # the caption it gets alone
    assert max(o["metrics"]["batch_size"] for _, o in together) > 2  # decoded together
    assert all(o["metrics"]["batch_size"] == 1 for _, o in alone)
    assert server.wait(until=("READY",), timeout=20)["status"] == "READY"
    assert worker_rss_mb(server) - before < 150  # MB: what the burst held is given back


def test_cancel_one_of_four_in_flight_and_a_bad_input_among_four(server, uris):
    """Four predictions in flight (PUT with their ids, each waiting for its answer); one is
    cancelled: it ends canceled, the other three succeed. Then a bad input among four fails alone."""
    bodies = [{"input": {"image": uris[i], **BURST, "max_tokens": 40 if i == 1 else 6}} for i in range(4)]
    out = [None] * 4

    def send(i):
        out[i] = http("PUT", f"{server.url}/predictions/p{i}", bodies[i], timeout=300)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60  # p1 (40 tokens) is cancelled once the server knows it: on a busy
    while True:                       # machine its PUT may take more than a second to arrive
        time.sleep(0.5)
        code = http("POST", f"{server.url}/predictions/p1/cancel", timeout=10)[0]
        if code != 404 or time.monotonic() > deadline:
            break
    assert code == 200, code
    for t in threads:
        t.join()
    statuses = [o["status"] for _, o in out]
    assert statuses == ["succeeded", "canceled", "succeeded", "succeeded"], ([(c, o.get("error")) for c, o in out],
                                                                            server.log_tail())
    bad = [{"input": {"image": uris[i], **BURST}} for i in range(3)] + [{"input": {"image": uris[0], **BURST,
                                                                                  "beam_size": 9, "top_k": 4}}]
    answers = burst(server, bad)
    assert [o["status"] for _, o in answers] == ["succeeded"] * 3 + ["failed"], ([o.get("error") for _, o in answers],
                                                                                  server.log_tail())
    assert "beam_size (9) must not exceed top_k (4)" in answers[3][1]["error"]
    assert server.wait(until=("READY",), timeout=20)["status"] == "READY"


def cancel_storm(server, uris, rounds: int):
    """Rounds of 16 predictions in flight, 8 cancelled through the API and 8 whose clients hang up,
    each followed by 16 new ones at once; [(round, statuses of the new ones)]."""
    from http.client import HTTPConnection

    long = {**BURST, "max_tokens": 40, "end_factor": 0.5}
    seen = []
    for n in range(rounds):
        waiting = []

        def put(i, n=n):
            http("PUT", f"{server.url}/predictions/storm{n}-{i}", {"input": {"image": uris[i % 4], **long}}, timeout=300)

        for i in range(8):
            waiting.append(threading.Thread(target=put, args=(i,)))
            waiting[-1].start()
        dropped = []
        for i in range(8):
            c = HTTPConnection("127.0.0.1", server.port, timeout=30)
            c.request("POST", "/predictions", json.dumps({"input": {"image": uris[i % 4], **long}}),
                      {"Content-Type": "application/json"})
            dropped.append(c)
        time.sleep(0.5)
        for i in range(8):
            http("POST", f"{server.url}/predictions/storm{n}-{i}/cancel", timeout=30)
        for c in dropped:
            c.close()  # the client hangs up
        for t in waiting:
            t.join()
        assert server.wait(until=("READY",), timeout=120)["status"] == "READY"
        body = {"input": {"image": uris[0], **SMALL}}
        answers = burst(server, [body] * 16, retry=False)  # the 409s counted below
        retried = []
        for status, _ in answers:
            if status == 409:  # coglet's (see the test below): the slot comes back; a retry is accepted
                for _ in range(10):
                    time.sleep(1)
                    again = http("POST", server.url + "/predictions", body, timeout=300)[0]
                    if again != 409:
                        break
                retried.append(again)
        seen.append((n, [s for s, _ in answers], retried))
    return seen


@pytest.mark.parametrize("rounds", [2, pytest.param(20, marks=pytest.mark.slow)])
def test_cancel_storms_leave_no_pending_task_and_every_slot_comes_back(weights_root, uris, rounds):
    """Predictions cancelled or dropped by their clients, round after round, each round followed
    by 16 new ones at once: the worker leaves no asyncio task pending, and every new prediction is
    accepted -- at once, or, where coglet answers 409, on a retry once the slot is back.

    The 409s are coglet 0.23's, not the worker's: traced in the worker, every cancelled
    prediction's run() ended within the cancel (160 of 160 over 10 rounds) and the server said
    READY, yet in about one round in five one of the 16 got 409 for a few seconds (also 3 s
    after READY; never in bursts without cancels before them). coglet returns a slot to its pool
    only once its worker-side bookkeeping confirms the slot idle (permit/slot.rs); where that
    lags after a cancel was not pinned down. The README says so (Many clients at once) and what
    a client does: retry on 409."""
    s = Server({"ZEROCAP_WEIGHTS": weights_root, "ZEROCAP_OFFLINE": "1"})
    try:
        assert s.wait()["status"] == "READY"
        seen = cancel_storm(s, uris, rounds)
        assert all(status in (200, 409) for _, statuses, _ in seen for status in statuses), seen
        assert all(retried == [200] * len(retried) for _, _, retried in seen), (seen, s.log_tail())
        # coglet's lag (README): seen at most one a round on a quiet machine, three in a round under load; a
        # slot that never came back would show in every round and in the retries above
        assert sum(statuses.count(409) for _, statuses, _ in seen) <= 4 * rounds, seen
        log = s.log_tail(10_000_000)
        assert "Task was destroyed but it is pending" not in log, log[-4000:]
    finally:
        s.stop()


@pytest.mark.slow
def test_memory_returns_after_three_79_megapixel_images(server):
    """Three 79 MP PNGs at once (each 237 MB of pixels once decoded): once they are answered, the
    worker is back within 200 MB of where it was (malloc_trim when the decoder goes idle)."""
    big = Image.new("RGB", (8888, 8888), (90, 140, 200))  # 78,996,544 pixels, under the 80 MP limit
    uri = data_uri(png(big))
    del big
    bodies = [{"input": {"image": uri, **SMALL}} for _ in range(3)]
    burst(server, [{"input": {"image": data_uri(png(Image.new("RGB", (64, 64)))), **SMALL}}])  # settle
    time.sleep(1)
    before = worker_rss_mb(server)
    answers = burst(server, bodies)
    assert [o["status"] for _, o in answers] == ["succeeded"] * 3, [o.get("error") for _, o in answers]
    assert server.wait(until=("READY",), timeout=20)["status"] == "READY"
    time.sleep(1)
    assert worker_rss_mb(server) - before < 200, (before, worker_rss_mb(server))


# ---- the pseudo-token method through the server --------------------------------------------------------
PT = {"method": "pseudo-tokens", "sentence_iterations": 3, "max_tokens": 6, "beam_size": 2}


def test_the_pseudo_token_method_answers_with_its_sentences(server, uris):
    out = server.predict(image=uris[0], seed=4, **PT)
    assert out["status"] == "succeeded", out.get("error")
    o = out["output"]
    assert o["method"] == "pseudo-tokens" and o["seed"] == 4
    assert len(o["sentences"]) == len(o["sentence_clip_scores"]) == len(o["sentence_log_probs"]) == 3
    assert o["caption"] == o["best_clip"] and o["best_clip"] in o["sentences"] and o["best_mixed"] in o["sentences"]
    assert len(o["beams"]) == 2 and all(b.startswith("Image of a") for b in o["beams"])
    assert o["clip_scores"] == [] and o["perplexities"] == [] and o["best_fluency"] == ""
    assert "sentence 1/3: " in out["logs"]  # per-sentence progress in the prediction's logs


def test_a_knob_of_the_other_method_fails_that_prediction_in_words(server, uris):
    out = server.predict(image=uris[0], num_iterations=3, **PT)
    assert_failed(server, out, "num_iterations is a knob of method zerocap, not of pseudo-tokens")


# ---- MAGIC through the server ---------------------------------------------------------------------------
MAGIC = {"method": "magic", "k": 10, "max_tokens": 5}


def test_magic_requests_together_each_answer_as_alone_and_a_bad_one_fails_in_words(server, uris):
    """Three MAGIC requests of other settings at once, beside a bad one: each answers what it
    answers alone, with its own fields, and the bad one fails that prediction only."""
    bodies = [{"input": {"image": uris[i], **MAGIC, "beta": float(i)}} for i in range(3)]
    alone = [http("POST", server.url + "/predictions", b, timeout=300)[1] for b in bodies]
    together = burst(server, bodies + [{"input": {"image": uris[3], **MAGIC, "num_iterations": 3}}])
    for a, (_, b) in zip(alone, together):
        assert a["status"] == b["status"] == "succeeded", (a.get("error"), b.get("error"), server.log_tail())
        assert a["output"]["caption"] == b["output"]["caption"] and a["output"]["method"] == "magic"
        assert len(b["output"]["step_tokens"]) == b["output"]["tokens"] and b["output"]["beams"] == []
    assert_failed(server, together[3][1], "num_iterations is a knob of method zerocap, not of magic")
    assert "token 1/5: " in alone[0]["logs"]  # per-token progress in the prediction's logs


def test_four_pseudo_token_requests_together_share_steps_each_with_its_output_alone(server, uris):
    """How much sooner together than one at a time is bench/served.py's row, not an assertion here."""
    bodies = [{"input": {"image": uris[i % 4], "seed": i, **PT}} for i in range(4)]
    alone = [http("POST", server.url + "/predictions", b, timeout=300) for b in bodies]
    together = burst(server, bodies)
    for (_, a), (_, b) in zip(alone, together):
        assert a["status"] == b["status"] == "succeeded", (a.get("error"), b.get("error"), server.log_tail())
        for key in ("sentences", "caption", "best_mixed", "beams"):
            assert a["output"][key] == b["output"][key], key  # what it gets alone
    assert max(o["metrics"]["batch_size"] for _, o in together) > 2  # decoded together


def test_a_zerocap_caption_beside_a_long_pseudo_token_request_is_not_held_up(server, uris):
    """A long pseudo-token request in flight takes turns with a ZeroCap caption step by step
    (the scheduler's lanes): the caption finishes, with its output alone, while the long one still
    decodes, and the long one then finishes too. How long the caption takes beside it is
    bench/served.py's row (a time ratio fails on a shared machine, not in the code)."""
    body = {"input": {"image": uris[1], **BURST}}
    alone = http("POST", server.url + "/predictions", body, timeout=300)[1]
    long = {"input": {"image": uris[0], "method": "pseudo-tokens", "sentence_iterations": 40, "max_tokens": 10}}
    done = {}
    thread = threading.Thread(target=lambda: done.update(out=http("POST", server.url + "/predictions", long,
                                                                   timeout=600)[1]))
    thread.start()
    time.sleep(1.0)  # it is decoding
    beside = http("POST", server.url + "/predictions", body, timeout=300)[1]
    assert beside["status"] == "succeeded" and beside["output"]["beams"] == alone["output"]["beams"]
    assert "out" not in done, "the long request should still be running"
    thread.join(600)
    assert done["out"]["status"] == "succeeded", done["out"].get("error")


def test_the_health_check_stays_ready_while_a_prediction_is_in_flight(server, uris):
    """As the README says: READY means a slot is free, not that nothing runs."""
    long = {"input": {"image": uris[0], "method": "pseudo-tokens", "sentence_iterations": 20, "max_tokens": 10}}
    done = {}
    thread = threading.Thread(target=lambda: done.update(out=http("POST", server.url + "/predictions", long,
                                                                   timeout=600)[1]))
    thread.start()
    try:
        seen = set()
        for _ in range(50):
            seen.add(server.health()["status"])
            if "out" in done:
                break
            time.sleep(0.02)
        assert "out" not in done, "the prediction ended before the health check was read beside it"
        assert seen == {"READY"}, seen
    finally:
        thread.join(600)
    assert done["out"]["status"] == "succeeded"


def test_an_ordinary_x264_clip_is_served_with_the_authors_sampling(server, tmp_path):
    """A 20 s clip with x264's default key frames (one every 250 frames): the pseudo-token method's
    every 10th frame, 60 frames, within the container's 64 (it was refused: too much decoding)."""
    from test_video import write_video

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)
    path = write_video(tmp_path / "s20.mp4", [np.roll(base, i, axis=1) for i in range(600)], fps=30,
                       codec="libx264", pix_fmt="yuv420p")
    out = server.predict(mode="video", video=data_uri(path, "video/mp4"), method="pseudo-tokens",
                         sentence_iterations=1, max_tokens=2, beam_size=2)
    assert out["status"] == "succeeded", (out.get("error"), server.log_tail())
    o = out["output"]
    assert o["frames_asked"] == 60 and o["frames_sampling"] == "every 10th frame (30 fps // 3)"


# ---- another pair: a Llama-style LM (grouped-query attention, SentencePiece) and an OpenCLIP model ----
@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """A weights folder whose models.json names a tiny Llama-style LM and a tiny OpenCLIP folder:
    the container built with it serves that pair."""
    from tiny_models import write_tiny_lm, write_tiny_open_clip

    root = tmp_path_factory.mktemp("llama-weights")
    write_tiny_lm(str(root / "Tiny-Llama"), "llama")
    write_tiny_open_clip(str(root / "clip" / "Tiny-OpenCLIP"))
    (root / "models.json").write_text(json.dumps({"lm": "Tiny-Llama", "clip": "clip/Tiny-OpenCLIP"}))
    s = Server({"ZEROCAP_WEIGHTS": str(root), "ZEROCAP_OFFLINE": "1"})
    try:
        assert s.wait()["status"] == "READY", s.log_tail()
        yield s
    finally:
        s.stop()


def test_another_pair_batches_cancels_and_isolates_as_gpt2(llama_server, uris):
    """Served on a tiny Llama + OpenCLIP: a burst of both methods' requests with other prompts
    shares steps, each with its output alone; one of three in flight is cancelled and the others
    succeed; a bad input fails alone; the server stays READY."""
    server = llama_server
    bodies = [{"input": {"image": uris[i % 4], **BURST, "cond_text": ["Image of a", "A photo of"][i % 2]}}
              for i in range(4)] + [{"input": {"image": uris[i], "seed": i, **PT}} for i in range(2)]
    alone = [http("POST", server.url + "/predictions", b, timeout=300) for b in bodies]
    together = burst(server, bodies)
    for (_, a), (_, b) in zip(alone, together):
        assert a["status"] == b["status"] == "succeeded", (a.get("error"), b.get("error"), server.log_tail())
        for key in ("caption", "beams", "sentences"):
            assert a["output"][key] == b["output"][key], key
    assert all(o["output"]["beams"][0].startswith(("Image of a", "A photo of")) for _, o in together[:4])
    assert max(o["metrics"]["batch_size"] for _, o in together) > 2  # decoded together
    out = [None] * 3

    def send(i):
        body = {"input": {"image": uris[i], **BURST, "max_tokens": 40 if i == 1 else 6}}
        out[i] = http("PUT", f"{server.url}/predictions/q{i}", body, timeout=300)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    assert http("POST", f"{server.url}/predictions/q1/cancel", timeout=10)[0] == 200
    for t in threads:
        t.join()
    assert [o["status"] for _, o in out] == ["succeeded", "canceled", "succeeded"], (out, server.log_tail())
    bad = burst(server, [{"input": {"image": uris[0], **BURST}}, {"input": {"image": uris[1], **BURST,
                                                                            "beam_size": 9, "top_k": 4}}])
    assert [o["status"] for _, o in bad] == ["succeeded", "failed"]
    assert "beam_size (9) must not exceed top_k (4)" in bad[1][1]["error"]
    assert server.wait(until=("READY",), timeout=20)["status"] == "READY"
