"""Weights you can trust (issue 38): every byte verified, nothing written through a link or outside
the weights folder, a folder tied to its repo, offline means offline, every failure one line.

Each test plays a careful user or a hostile hub (tests/loopback_hub.py) against
script/download-weights, the command every user runs to reach other models."""
import hashlib
import json
import os
import subprocess
import sys
import threading

import pytest

from loopback_hub import Hub
from zerocap import families, hub as hub_client, weights

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT_DIR, "script", "download-weights")
GPT2 = families.DEFAULT.repo


@pytest.fixture
def hub(lm_dir, clip_file, monkeypatch):
    h = Hub(lm_dir, clip_file)
    monkeypatch.setenv("HF_ENDPOINT", h.url)
    monkeypatch.setenv("ZEROCAP_CLIP_URL", f"{h.url}/clip/{h.clip_sha}/ViT-B-32.pt")
    for name in ("ZEROCAP_OFFLINE", "HF_HUB_OFFLINE", "ZEROCAP_LM", "ZEROCAP_CLIP", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    yield h
    h.close()


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from tiny_models import write_tiny_lm

    return write_tiny_lm(str(tmp_path_factory.mktemp("llama") / "lm"), "llama")


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    from tiny_models import write_tiny_open_clip

    return write_tiny_open_clip(str(tmp_path_factory.mktemp("oc") / "oc"))


def run(root, *args, env=None):
    """The download command as a user runs it: (exit code, stdout, stderr) -- its main() in this
    process, with its own argv and environment (a fresh interpreter each time costs seconds)."""
    import contextlib
    import importlib.machinery
    import io
    import traceback

    script = importlib.machinery.SourceFileLoader("download_weights", SCRIPT).load_module()
    saved_env, saved_argv = dict(os.environ), sys.argv
    out, err = io.StringIO(), io.StringIO()
    os.environ.update(env or {})
    sys.argv = [SCRIPT, "--root", str(root), *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = script.main()
            except SystemExit as e:
                rc = e.code
            except Exception:  # noqa: BLE001 -- a traceback is what the tests look for
                traceback.print_exc()
                rc = 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
    return rc, out.getvalue(), err.getvalue()


def run_process(root, *args):
    r = subprocess.run([sys.executable, SCRIPT, "--root", str(root), *args], capture_output=True, text=True,
                       timeout=300)
    return r.returncode, r.stdout, r.stderr


def one_line_error(rc, err):
    """A failure a user can cause: exit 2 and one line on stderr, no traceback."""
    lines = [x for x in err.splitlines() if x.startswith("download-weights: error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def snapshot(folder):
    """Every file under a folder with its bytes (links as their targets' names)."""
    out = {}
    for base, dirs, files in os.walk(folder):
        for f in files:
            p = os.path.join(base, f)
            out[os.path.relpath(p, folder)] = ("link", os.readlink(p)) if os.path.islink(p) else open(p, "rb").read()
    return out


def manifest(root):
    return json.loads((root / "manifest.json").read_text())


# ---- 1. nothing written outside the weights folder, nothing through a link ----------------------
def test_a_planted_part_link_is_removed_never_followed(hub, tmp_path, tiny_llama):
    hub.serve_lm(tiny_llama, "good/Tiny-Llama")
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_bytes(b"0123456789abcdef")
    root = tmp_path / "w"
    (root / "Tiny-Llama").mkdir(parents=True)
    os.symlink(victim, root / "Tiny-Llama" / "config.json.part")
    os.symlink(outside / "manifest-target", root / "manifest.json.part")
    rc, _, err = run(root, "--lm", "good/Tiny-Llama")
    assert rc == 0, err
    assert victim.read_bytes() == b"0123456789abcdef" and os.listdir(outside) == ["victim.txt"]
    config = root / "Tiny-Llama" / "config.json"
    assert not config.is_symlink() and config.read_bytes() == hub.file("good/Tiny-Llama", "config.json")


def test_manifest_and_models_json_are_replaced_not_written_through(hub, tmp_path, tiny_llama):
    hub.serve_lm(tiny_llama, "good/Tiny-Llama")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "m.json").write_text('{"files": []}')
    (outside / "c.json").write_text('{"lm": "gpt2-medium"}')
    root = tmp_path / "w"
    root.mkdir()
    os.symlink(outside / "m.json", root / "manifest.json")
    os.symlink(outside / "c.json", root / "models.json")
    rc, _, err = run(root, "--lm", "good/Tiny-Llama", "--use")
    assert rc == 0, err
    assert (outside / "m.json").read_text() == '{"files": []}' and (outside / "c.json").read_text() == '{"lm": "gpt2-medium"}'
    assert not (root / "manifest.json").is_symlink() and not (root / "models.json").is_symlink()
    assert json.loads((root / "models.json").read_text())["lm"] == "Tiny-Llama"


def test_a_linked_model_folder_is_refused(hub, tmp_path, tiny_llama):
    hub.serve_lm(tiny_llama, "good/Tiny-Llama")
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "w"
    root.mkdir()
    os.symlink(outside, root / "Tiny-Llama")
    line = one_line_error(*run(root, "--lm", "good/Tiny-Llama")[::2])
    assert "is a link: download-weights writes only inside" in line and os.listdir(outside) == []


# ---- 2. no unverified byte installed ------------------------------------------------------------
def test_a_stale_part_answered_416_without_headers_is_fetched_again(hub, tmp_path, tiny_llama):
    hub.serve_lm(tiny_llama, "good/Tiny-Llama")
    hub.bare_416 = True
    real = hub.file("good/Tiny-Llama", "model.safetensors")
    root = tmp_path / "w"
    (root / "Tiny-Llama").mkdir(parents=True)
    (root / "Tiny-Llama" / "model.safetensors.part").write_bytes(b"\0" * len(real))  # complete size, wrong bytes
    rc, _, err = run(root, "--lm", "good/Tiny-Llama")
    assert rc == 0, err
    assert (root / "Tiny-Llama" / "model.safetensors").read_bytes() == real
    assert "did not verify; fetching it again" in err


def test_a_small_file_is_checked_by_its_git_blob_id(hub, tmp_path, tiny_llama):
    hub.serve_lm(tiny_llama, "good/Tiny-Llama")
    real = hub.file("good/Tiny-Llama", "tokenizer_config.json")
    hub.tampered[("good/Tiny-Llama", "tokenizer_config.json")] = real.replace(b"}", b",\"x\": 1}", 1)[:len(real)]
    root = tmp_path / "w"
    line = one_line_error(*run(root, "--lm", "good/Tiny-Llama")[::2])
    assert "checksum mismatch" in line and "git blob id" in line
    assert not (root / "Tiny-Llama" / "tokenizer_config.json").exists()
    assert not (root / "Tiny-Llama" / "tokenizer_config.json.part").exists()


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_a_file_without_a_digest_is_refused(hub, tmp_path, tiny_llama, name):
    hub.serve_lm(tiny_llama, "good/Tiny-Llama")
    hub.no_digest.add(("good/Tiny-Llama", name))
    root = tmp_path / "w"
    line = one_line_error(*run(root, "--lm", "good/Tiny-Llama")[::2])
    assert f"the hub names no digest for {hub.url}/good/Tiny-Llama/resolve/" in line and line.endswith("not installed")
    assert not (root / "Tiny-Llama" / name).exists()


def test_a_body_longer_than_declared_is_cut_off(hub, tmp_path, tiny_llama):
    hub.serve_lm(tiny_llama, "good/Tiny-Llama")
    real = hub.file("good/Tiny-Llama", "model.safetensors")
    hub.extra[("good/Tiny-Llama", "model.safetensors")] = b"\0" * (4 << 20)
    root = tmp_path / "w"
    line = one_line_error(*run(root, "--lm", "good/Tiny-Llama")[::2])
    assert f"sent more than the {len(real):,} bytes it declared" in line
    assert not (root / "Tiny-Llama" / "model.safetensors").exists()
    assert not (root / "Tiny-Llama" / "model.safetensors.part").exists()


# ---- 3. a folder is tied to its repo ------------------------------------------------------------
def test_another_repo_of_the_same_name_is_refused(hub, tmp_path, tiny_llama):
    hub.serve_lm(tiny_llama, "good/Tiny-Llama")
    hub.serve_lm(tiny_llama, "other/Tiny-Llama")
    root = tmp_path / "w"
    assert run(root, "--lm", "good/Tiny-Llama")[0] == 0
    before = snapshot(root / "Tiny-Llama")
    n = len(hub.requests)
    line = one_line_error(*run(root, "--lm", "other/Tiny-Llama", "--use")[::2])
    assert "Tiny-Llama holds good/Tiny-Llama, not other/Tiny-Llama" in line
    assert hub.requests[n:] == [] and snapshot(root / "Tiny-Llama") == before and not (root / "models.json").exists()
    assert run(root, "--lm", "good/Tiny-Llama")[0] == 0  # the right one is still there


def test_anyone_gpt2_medium_does_not_land_on_the_papers_model(hub, tmp_path, lm_dir):
    root = tmp_path / "w"
    weights.download(str(root), log=lambda m: None)
    hub.serve_lm(lm_dir, "anyone/gpt2-medium")
    line = one_line_error(*run(root, "--lm", "anyone/gpt2-medium")[::2])
    assert f"gpt2-medium holds {GPT2}, not anyone/gpt2-medium" in line


def test_a_folder_not_written_by_the_download_is_never_overwritten(hub, tmp_path, tiny_llama):
    hub.serve_lm(tiny_llama, "good/Tiny-Llama")
    root = tmp_path / "w"
    (root / "Tiny-Llama").mkdir(parents=True)
    (root / "Tiny-Llama" / "config.json").write_text('{"mine": true}')
    line = one_line_error(*run(root, "--lm", "good/Tiny-Llama")[::2])
    assert "config.json is there and is not" in line and "download-weights did not write it" in line
    assert (root / "Tiny-Llama" / "config.json").read_text() == '{"mine": true}'


def test_a_new_commit_replaces_the_folders_files_and_drops_those_it_lacks(hub, tmp_path, tiny_llama):
    files = {n: open(os.path.join(tiny_llama, n), "rb").read() for n in os.listdir(tiny_llama)}
    first = hub.push("good/Tiny-Llama", {**files, "merges.txt": b"#version: 0.2\n"})
    root = tmp_path / "w"
    assert run(root, "--lm", "good/Tiny-Llama")[0] == 0
    assert (root / "Tiny-Llama" / "merges.txt").exists()
    second = hub.push("good/Tiny-Llama", {**files, "generation_config.json": b'{"do_sample": false}'})
    n = len(hub.requests)
    assert run(root, "--lm", "good/Tiny-Llama")[0] == 0 and hub.requests[n:] == []  # recorded at main: no request
    rc, _, err = run(root, "--lm", "good/Tiny-Llama", "--update")
    assert rc == 0, err
    assert not (root / "Tiny-Llama" / "merges.txt").exists()
    assert (root / "Tiny-Llama" / "generation_config.json").read_bytes() == b'{"do_sample": false}'
    rec = {r["folder"]: r for r in manifest(root)["repos"]}["Tiny-Llama"]
    assert rec["commit"] == second != first and "merges.txt" not in rec["files"]
    assert all(f"/resolve/{second}/" in p or "/resolve/main/" in p for p in hub.requests[n:] if "resolve" in p)


# ---- revisions: resolved to one commit, recorded -------------------------------------------------
def test_a_revision_is_resolved_once_and_every_file_fetched_at_its_commit(hub, tmp_path, tiny_llama):
    commit = hub.serve_lm(tiny_llama, "good/Tiny-Llama")
    root = tmp_path / "w"
    n = len(hub.requests)
    assert run(root, "--lm", "good/Tiny-Llama")[0] == 0
    asked = [p for p in hub.requests[n:] if "/resolve/" in p]
    assert asked[0] == "/good/Tiny-Llama/resolve/main/config.json"
    assert all(f"/resolve/{commit}/" in p for p in asked[1:])
    rec = {r["folder"]: r for r in manifest(root)["repos"]}["Tiny-Llama"]
    assert rec["repo"] == "good/Tiny-Llama" and rec["revision"] == "main" and rec["commit"] == commit
    files = {e["file"]: e for e in manifest(root)["files"]}
    data = hub.file("good/Tiny-Llama", "config.json")
    assert files["Tiny-Llama/config.json"]["git"] == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    n = len(hub.requests)  # the same repo at the same commit: nothing asked
    assert run(root, "--lm", "good/Tiny-Llama", "--revision", commit)[0] == 0 and hub.requests[n:] == []


def test_a_repo_that_moves_mid_download_is_refused(hub, tmp_path, tiny_llama):
    commit = hub.serve_lm(tiny_llama, "good/Tiny-Llama")
    moved = "f" * 40
    commits = hub.repos["good/Tiny-Llama"]["commits"]
    commits[moved] = commits[commit]  # the same files, at another commit
    real_answer = hub.answer

    def moving(h):  # after the config, every answer is the other commit's
        if "config.json" not in h.path:
            h.path = h.path.replace(f"/resolve/{commit}/", f"/resolve/{moved}/")
        return real_answer(h)

    hub.answer = moving
    line = one_line_error(*run(tmp_path / "w", "--lm", "good/Tiny-Llama")[::2])
    assert f"at commit {moved}, not {commit}: the files would not be of one commit" in line


# ---- 4. the models.json pair is checked at start-up ---------------------------------------------
def test_start_up_checks_the_models_json_pair(hub, tmp_path, tiny_llama, tiny_open_clip, monkeypatch):
    from zerocap import ZeroCap

    hub.serve_lm(tiny_llama, "good/Tiny-Llama")
    hub.serve_lm(tiny_open_clip, "laion/Tiny-CLIP")
    root = tmp_path / "w"
    rc, _, err = run(root, "--lm", "good/Tiny-Llama", "--clip", "laion/Tiny-CLIP", "--use")
    assert rc == 0, err
    monkeypatch.setenv("ZEROCAP_WEIGHTS", str(root))
    monkeypatch.setenv("ZEROCAP_OFFLINE", "1")
    weight = root / "Tiny-Llama" / "model.safetensors"
    data = weight.read_bytes()
    weight.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model.safetensors has \d+ bytes but the manifest says \d+: it is incomplete"):
        ZeroCap.load(device="cpu")
    weight.write_bytes(data)
    src = tmp_path / "src"
    src.mkdir()
    os.symlink(tiny_llama, src / "llama")
    (root / "models.json").write_text(json.dumps({"lm": "../src/llama", "clip": "clip/Tiny-CLIP"}))
    with pytest.raises(ValueError, match=r"names '../src/llama' as the LM, which is not under .*set \$ZEROCAP_LM"):
        ZeroCap.load(device="cpu")
    (root / "models.json").write_text(json.dumps({"lm": "Gone-LM", "clip": "clip/Tiny-CLIP"}))
    with pytest.raises(ValueError, match=r"names 'Gone-LM' as the LM, which is not in .*download-weights --lm OWNER/Gone-LM"):
        ZeroCap.load(device="cpu")


# ---- 5. offline is offline ----------------------------------------------------------------------
def test_offline_sends_nothing_and_uses_what_is_verified(hub, tmp_path, tiny_llama):
    hub.serve_lm(tiny_llama, "good/Tiny-Llama")
    root = tmp_path / "w"
    for var in ("ZEROCAP_OFFLINE", "HF_HUB_OFFLINE"):
        line = one_line_error(*run(root, "--lm", "good/Tiny-Llama", env={var: "1"})[::2])
        assert "offline" in line and "good/Tiny-Llama is not there" in line
    line = one_line_error(*run(root, env={"ZEROCAP_OFFLINE": "1"})[::2])
    assert "offline" in line
    assert hub.requests == []
    assert run(root, "--lm", "good/Tiny-Llama")[0] == 0  # online: the LM (its tokenizer.model never existed)
    n = len(hub.requests)
    rc, out, err = run(root, "--lm", "good/Tiny-Llama", "--use", env={"ZEROCAP_OFFLINE": "1"})
    assert rc == 0, err
    assert hub.requests[n:] == [] and "serves Tiny-Llama + clip/ViT-B-32.pt" in out
    (root / "Tiny-Llama" / "tokenizer.json").unlink()
    line = one_line_error(*run(root, "--lm", "good/Tiny-Llama", env={"HF_HUB_OFFLINE": "1"})[::2])
    assert "is not complete there (missing tokenizer.json)" in line and hub.requests[n:] == []


# ---- 6. every failure is one line ---------------------------------------------------------------
def test_a_cut_connection_is_one_line_and_the_rerun_resumes_and_verifies(hub, tmp_path, tiny_llama):
    hub.serve_lm(tiny_llama, "good/Tiny-Llama")
    key = ("good/Tiny-Llama", "model.safetensors")
    hub.cut[key] = 1_000_000
    root = tmp_path / "w"
    line = one_line_error(*run(root, "--lm", "good/Tiny-Llama")[::2])
    kept = (root / "Tiny-Llama" / "model.safetensors.part").stat().st_size
    assert 0 < kept <= 1_000_000 and not (root / "Tiny-Llama" / "model.safetensors").exists()
    assert f"was cut after {kept:,} of {len(hub.file(*key)):,} bytes" in line
    assert "run the same command again to resume" in line
    del hub.cut[key]
    rc, _, err = run(root, "--lm", "good/Tiny-Llama")
    assert rc == 0 and f"resuming at {kept:,} bytes" in err, err
    assert (root / "Tiny-Llama" / "model.safetensors").read_bytes() == hub.file(*key)


def test_a_malformed_manifest_is_one_line_everywhere(hub, tmp_path, monkeypatch, images):
    root = tmp_path / "w"
    weights.download(str(root), log=lambda m: None)
    for text, why in (("{not json", "not JSON"), ('{"files": [{"file": "x"}]}', "no 'size'"),
                      ('{"files": 3}', "'int' object is not iterable")):
        (root / "manifest.json").write_text(text)
        line = one_line_error(*run(root)[::2])
        assert f"manifest.json is damaged ({why}" in line and "move it away" in line
        r = subprocess.run([sys.executable, "-m", "zerocap", "caption", images[0], "--max-tokens", "1"],
                           capture_output=True, text=True, env={**os.environ, "ZEROCAP_WEIGHTS": str(root),
                                                                "ZEROCAP_OFFLINE": "1"}, timeout=300)
        assert r.returncode == 2 and "manifest.json is damaged" in r.stderr and "Traceback" not in r.stderr
    monkeypatch.setenv("ZEROCAP_WEIGHTS", str(root))
    from zerocap import ZeroCap

    with pytest.raises(ValueError, match="manifest.json is damaged"):
        ZeroCap.load(device="cpu")
    (root / "manifest.json").unlink()  # moved away, as the message says: the files are verified again, kept
    n = len(hub.requests)
    rc, _, err = run(root)
    assert rc == 0, err
    assert not any("downloading" in x for x in err.splitlines())  # re-verified against the hub, nothing fetched
    assert len(hub.requests) > n and {e["file"] for e in manifest(root)["files"]} >= {"clip/ViT-B-32.pt",
                                                                                       "gpt2-medium/config.json"}


def test_malformed_models_json_under_use_is_one_line(hub, tmp_path):
    root = tmp_path / "w"
    root.mkdir()
    (root / "models.json").write_text("[1, 2")
    line = one_line_error(*run(root, "--use")[::2])
    assert "models.json cannot be read as JSON" in line


def test_names_too_long_or_not_folders_are_one_line(hub, tmp_path, tiny_llama):
    root = tmp_path / "w"
    line = one_line_error(*run(root, "--lm", "owner/" + "x" * 300)[::2])
    assert "is not a Hugging Face repo id" in line
    line = one_line_error(*run(root, "--lm", "good/Tiny-Llama", "--revision", "../../main")[::2])
    assert "--revision '../../main': give a branch, tag or commit of the repo" in line
    root.mkdir()
    (root / "Tiny-Llama").write_text("a file")
    hub.serve_lm(tiny_llama, "good/Tiny-Llama")
    line = one_line_error(*run(root, "--lm", "good/Tiny-Llama")[::2])
    assert "is a file where download-weights needs a folder" in line
    (root / "Tiny-Llama").unlink()
    files = {n: open(os.path.join(tiny_llama, n), "rb").read() for n in os.listdir(tiny_llama)}
    del files["model.safetensors"]
    files["model.safetensors.index.json"] = json.dumps({"weight_map": {"a": "s" * 300 + ".safetensors"}}).encode()
    hub.push("evil/Tiny-Shards", files)
    line = one_line_error(*run(root, "--lm", "evil/Tiny-Shards")[::2])
    assert "names shards that are not plain .safetensors file names" in line
    files["model.safetensors.index.json"] = json.dumps({"weight_map": {"a": "../../escape.safetensors"}}).encode()
    hub.push("evil/Tiny-Shards", files)
    assert "names shards that are not plain" in one_line_error(*run(root, "--lm", "evil/Tiny-Shards", "--update")[::2])


def test_two_runs_of_one_repo_the_second_refused_in_one_line(hub, tmp_path, tiny_llama):
    hub.serve_lm(tiny_llama, "good/Tiny-Llama")
    root = tmp_path / "w"
    (root / "Tiny-Llama").mkdir(parents=True)
    with hub_client.lock(str(root), "Tiny-Llama", wait=False, busy="held"):  # as a first run holds it
        line = one_line_error(*run(root, "--lm", "good/Tiny-Llama")[::2])
    assert "another download-weights is fetching into" in line and "Tiny-Llama now" in line
    assert run(root, "--lm", "good/Tiny-Llama")[0] == 0


# ---- 7. concurrent runs keep every entry ---------------------------------------------------------
def test_two_repos_fetched_at_once_keep_both_entries(hub, tmp_path, tiny_llama, tiny_open_clip):
    hub.serve_lm(tiny_llama, "good/Tiny-Llama")
    hub.serve_lm(tiny_open_clip, "laion/Tiny-CLIP")
    root = tmp_path / "w"
    results = {}
    threads = [threading.Thread(target=lambda a=a: results.__setitem__(a, run_process(root, *a)))
               for a in (("--lm", "good/Tiny-Llama"), ("--lm", "gpt2-medium", "--clip", "laion/Tiny-CLIP"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r[0] == 0 for r in results.values()), results
    m = manifest(root)
    assert {r["folder"] for r in m["repos"]} == {"Tiny-Llama", "gpt2-medium", "clip/Tiny-CLIP"}
    files = {e["file"] for e in m["files"]}
    assert {"Tiny-Llama/model.safetensors", "gpt2-medium/model.safetensors",
            "clip/Tiny-CLIP/open_clip_model.safetensors"} <= files


def test_the_manifest_is_merged_under_its_lock(tmp_path):
    root = str(tmp_path)
    for i in range(2):
        open(os.path.join(root, f"f{i}"), "w").write("x")
    barrier = threading.Barrier(8)

    def add(i):
        barrier.wait()
        hub_client.record(root, {f"f{i % 2}": {"size": 1, "sha256": "0" * 64}}, {f"r{i}": {"repo": "a/b", "files": []}})

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    m = hub_client.read(root)
    assert set(m.repos) == {f"r{i}" for i in range(8)} and set(m.files) == {"f0", "f1"}


# ---- 8. a model that cannot run is refused before its weights -----------------------------------
@pytest.mark.parametrize("config", [{"model_type": "t5", "is_encoder_decoder": True},
                                   {"model_type": "llava", "vision_config": {}, "image_token_index": 3}])
def test_a_model_that_cannot_run_is_refused_before_its_weights(hub, tmp_path, config):
    hub.push("google/not-causal", {"config.json": json.dumps(config).encode(), "model.safetensors": b"\0" * 100})
    root = tmp_path / "w"
    line = one_line_error(*run(root, "--lm", "google/not-causal")[::2])
    assert "google/not-causal holds a" in line and "nothing else was fetched" in line
    assert hub.requests == ["/google/not-causal/resolve/main/config.json"]
    assert not (root / "not-causal" / "config.json").exists()


# ---- 9. --use loads what it names; a redirect's failure names its host ----------------------------
def test_use_loads_the_clip_before_naming_it(hub, tmp_path, tiny_llama):
    hub.serve_lm(tiny_llama, "good/Tiny-Llama")
    broken = {"open_clip_config.json": json.dumps({"model_cfg": {"embed_dim": "wide"}}).encode(),
              "open_clip_model.safetensors": b"not safetensors"}
    hub.push("laion/Broken-CLIP", broken)
    root = tmp_path / "w"
    line = one_line_error(*run(root, "--lm", "good/Tiny-Llama", "--clip", "laion/Broken-CLIP", "--use")[::2])
    assert line.startswith("download-weights: error: --use: cannot load OpenCLIP from")
    assert line.endswith("models.json was not written") and not (root / "models.json").exists()


def test_a_failed_redirect_names_the_host_that_failed(hub, tmp_path, tiny_llama):
    hub.serve_lm(tiny_llama, "good/Tiny-Llama")
    real = hub.answer

    def elsewhere(h):
        if h.path.endswith("model.safetensors"):
            return hub.status(h, 302, {"Location": "http://127.0.0.1:9/blob", "X-Linked-Size": "10",
                                       "X-Linked-Etag": '"' + "0" * 64 + '"'})
        return real(h)

    hub.answer = elsewhere
    line = one_line_error(*run(tmp_path / "w", "--lm", "good/Tiny-Llama")[::2])
    assert "cannot reach 127.0.0.1:9 to download" in line and "connection refused" in line


# ---- 10/11. a model's identity ------------------------------------------------------------------
def test_open_clip_name_at_file_has_a_fingerprint_and_an_unknown_name_is_refused(tmp_path, images, monkeypatch):
    from zerocap import cli

    ck = tmp_path / "ck.safetensors"
    ck.write_bytes(b"\0" * 64)
    monkeypatch.chdir(tmp_path)
    assert weights.fingerprint("ViT-B-32@ck.safetensors") != weights.fingerprint("ViT-L-14@ck.safetensors")
    assert weights.model_name("ViT-B-32@ck.safetensors") == "ViT-B-32@ck.safetensors"
    for command in (["caption", images[0]], ["knowledge", images[0]], ["ocr", images[0]]):
        code = cli.main([*command, "--clip", "No-Such-Model@ck.safetensors", "--max-tokens", "1"])
        assert code == 2


def test_the_open_clip_config_is_part_of_a_folders_fingerprint(tmp_path):
    from tiny_models import write_tiny_open_clip

    a = write_tiny_open_clip(str(tmp_path / "a"))
    b = str(tmp_path / "b")
    os.makedirs(b)
    for name in os.listdir(a):
        data = open(os.path.join(a, name), "rb").read()
        if name == "open_clip_config.json":
            data = data.replace(b'"quick_gelu": false', b'"quick_gelu": true')
        open(os.path.join(b, name), "wb").write(data)
    assert weights.fingerprint(a) != weights.fingerprint(b)


def test_a_copied_lm_folder_keeps_a_results_file_resumable(lm_dir, clip_file, images, tmp_path):
    import shutil

    from zerocap import cli

    out = tmp_path / "out.jsonl"
    common = ["--max-tokens", "1", "--beam-size", "1", "--clip", clip_file, "--out", str(out)]
    assert cli.main(["caption", images[0], *common, "--lm", lm_dir]) == 0
    copy = shutil.copytree(lm_dir, tmp_path / "elsewhere" / "my-gpt2")  # the same model, in another folder
    assert cli.main(["caption", images[0], images[1], *common, "--lm", str(copy)]) == 0  # resumed, not refused
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["image"] for x in lines] == [images[0], images[1]]


# ---- 12. Hugging Face CLIP and SigLIP repos -----------------------------------------------------
@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_a_hugging_face_clip_repo_is_fetched_and_served(hub, tmp_path, tiny_llama, kind, monkeypatch):
    from tiny_models import write_tiny_hf_clip

    hub.serve_lm(tiny_llama, "good/Tiny-Llama")
    hub.serve_lm(write_tiny_hf_clip(str(tmp_path / "src"), kind), f"google/tiny-{kind}")
    root = tmp_path / "w"
    rc, out, err = run(root, "--lm", "good/Tiny-Llama", "--clip", f"google/tiny-{kind}", "--use")
    assert rc == 0, err
    assert f"serves Tiny-Llama + clip/tiny-{kind}" in out
    assert "/google/tiny-{}/resolve/main/open_clip_config.json".format(kind) in hub.requests
    monkeypatch.setenv("ZEROCAP_WEIGHTS", str(root))
    monkeypatch.setenv("ZEROCAP_OFFLINE", "1")
    from zerocap import ZeroCap

    engine = ZeroCap.load(device="cpu")
    assert type(engine.scorer).__name__ == "HFClipScorer"


def test_a_repo_that_is_no_clip_is_refused_before_its_weights(hub, tmp_path):
    hub.push("someone/not-clip", {"config.json": b'{"model_type": "bert"}', "model.safetensors": b"\0"})
    line = one_line_error(*run(tmp_path / "w", "--clip", "someone/not-clip")[::2])
    assert "neither an OpenCLIP model (open_clip_config.json) nor a Hugging Face CLIP or SigLIP" in line
    assert not any("not-clip/resolve/main/model" in p for p in hub.requests)
