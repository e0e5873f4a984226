"""zerocap caption --ray: the same captions as the plain path, from a local Ray with 2 CPU actors."""
import json
import shutil

import pytest

from zerocap.cli import main

ray = pytest.importorskip("ray", reason="--ray needs pip install 'zerocap[ray]'")
FAST = ["--top-k", "16", "--beam-size", "2", "--max-tokens", "2", "--device", "cpu"]


@pytest.fixture
def local_ray():
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_gives_the_plain_paths_captions_and_resumes(local_ray, tmp_path, images, lm_dir, clip_file, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, p in enumerate(images):
        shutil.copy(p, folder / f"{i}.png")
    (folder / "bad.png").write_text("not an image")
    models = ["--lm", lm_dir, "--clip", clip_file, *FAST, "--batch-size", "2"]
    plain, on_ray = tmp_path / "plain.jsonl", tmp_path / "ray.jsonl"
    assert main(["caption", str(folder), *models, "--out", str(plain)]) == 1
    on_ray.write_text(plain.read_text().splitlines(keepends=True)[0])  # one image done earlier: skipped
    assert main(["caption", str(folder), *models, "--out", str(on_ray), "--ray", "--actors", "2"]) == 1
    err = capsys.readouterr().err
    assert "captioned 3, failed 1, skipped 1 already in" in err

    def by_image(path):
        return {r["image"]: ([b["text"] for b in r["beams"]] if "beams" in r else r["error"])
                for r in map(json.loads, path.read_text().splitlines())}

    assert by_image(on_ray) == by_image(plain) and len(by_image(on_ray)) == 5
    lines = on_ray.read_text().splitlines()
    assert len(lines) == 5  # each image once


@pytest.mark.slow
def test_ray_runs_magic_as_the_plain_path(local_ray, tmp_path, images, lm_dir, clip_file):
    """Another method's dataset job on Ray (MAGIC: its own output fields) gives the plain path's records."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, p in enumerate(images[:3]):
        shutil.copy(p, folder / f"{i}.png")
    models = ["--lm", lm_dir, "--clip", clip_file, "--device", "cpu", "--method", "magic", "--k", "8",
              "--max-tokens", "4", "--batch-size", "2"]
    plain, on_ray = tmp_path / "plain.jsonl", tmp_path / "ray.jsonl"
    assert main(["caption", str(folder), *models, "--out", str(plain)]) == 0
    assert main(["caption", str(folder), *models, "--out", str(on_ray), "--ray", "--actors", "2"]) == 0

    def by_image(path):
        return {r["image"]: (r["method"], r["caption"], r["step_tokens"]) for r in map(json.loads,
                                                                                    path.read_text().splitlines())}

    assert by_image(on_ray) == by_image(plain) and len(by_image(plain)) == 3
    assert all(method == "magic" and len(steps) >= 1 for method, _, steps in by_image(plain).values())


@pytest.mark.slow
def test_a_config_the_models_refuse_is_refused_before_ray_starts(capsys, images, lm_dir, clip_file):
    code = main(["caption", images[0], "--lm", lm_dir, "--clip", clip_file, *FAST, "--ray",
                 "--cond-text", "a " * 80])
    assert code == 2 and not ray.is_initialized()
    assert capsys.readouterr().err.strip() == ("zerocap: error: cond_text is too long for CLIP: 80 CLIP tokens;"
                                               " at most 74 CLIP tokens leave room for a generated word")


def ray_processes() -> set:
    """(pid, start time) of this machine's Ray processes: GCS, raylet, agents, dashboard, workers."""
    import os

    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            start = open(f"/proc/{pid}/stat", "rb").read().rsplit(b")", 1)[1].split()[19]
        except OSError:
            continue
        if "ray::" in cmd or "/ray/" in cmd or "raylet" in cmd or "gcs_server" in cmd:
            found.add((int(pid), start))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill -9", "Ctrl-C"])
def test_a_local_ray_ends_with_its_job_however_the_job_ends(tmp_path, images, lm_dir, clip_file, how):
    """The local Ray a job starts is its own: whether the driver is killed (-9) or interrupted, no
    Ray process of it is left a few seconds later; and Ray's start-up prints no error line."""
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(12):
        shutil.copy(images[i % 4], folder / f"{i}.png")
    before = ray_processes()
    out = tmp_path / "o.jsonl"
    cmd = [sys.executable, "-m", "zerocap", "caption", str(folder), "--lm", lm_dir, "--clip", clip_file,
           "--top-k", "16", "--beam-size", "2", "--max-tokens", "30", "--device", "cpu", "--batch-size", "1",
           "--ray", "--actors", "1", "--out", str(out)]
    job = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 180
    while time.time() < deadline and not (out.exists() and out.read_text().count("\n") >= 1):
        time.sleep(0.2)
    assert out.exists() and out.read_text(), "the job did not start captioning"
    started = ray_processes() - before
    assert started, "no Ray process seen"
    job.send_signal(signal.SIGKILL if how == "kill -9" else signal.SIGINT)
    err = job.communicate(timeout=60)[1]
    deadline = time.time() + 20
    while time.time() < deadline and ray_processes() & started:
        time.sleep(0.5)
    assert not ray_processes() & started, f"left behind: {ray_processes() & started}"
    assert "core_worker.cc" not in err and " E " not in err, err
