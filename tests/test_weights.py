"""Verified, resumable, idempotent weight download, against a local HTTP server on loopback."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from loopback_hub import Hub
from zerocap import families, weights
from zerocap import hub as hub_client

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def hub(lm_dir, clip_file, monkeypatch):
    h = Hub(lm_dir, clip_file)
    monkeypatch.setenv("HF_ENDPOINT", h.url)
    monkeypatch.setenv("ZEROCAP_CLIP_URL", f"{h.url}/clip/{h.clip_sha}/ViT-B-32.pt")
    monkeypatch.delenv("ZEROCAP_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield h
    h.close()


def test_clip_url_is_openais(monkeypatch):
    from clip.clip import _MODELS

    monkeypatch.delenv("ZEROCAP_CLIP_URL", raising=False)
    assert weights._clip_url() == _MODELS["ViT-B/32"]


def test_download_verifies_writes_manifest_and_is_idempotent(hub, tmp_path, lm_dir):
    root = str(tmp_path / "w")
    manifest = weights.download(root, log=lambda m: None)
    files = {e["file"]: e for e in manifest["files"]}
    assert files["clip/ViT-B-32.pt"]["sha256"] == hub.clip_sha
    data = open(os.path.join(lm_dir, "model.safetensors"), "rb").read()
    assert files["gpt2-medium/model.safetensors"] == {"file": "gpt2-medium/model.safetensors", "size": len(data),
                                                      "sha256": hashlib.sha256(data).hexdigest()}
    assert json.load(open(os.path.join(root, "manifest.json")))["files"] == manifest["files"]
    assert weights.missing(root) == []
    n = len(hub.requests)
    weights.download(root, log=lambda m: None)
    assert len(hub.requests) == n  # everything verified: nothing fetched again


def test_corrupted_file_is_rejected_by_checksum(hub, tmp_path):
    key = (families.DEFAULT.repo, "model.safetensors")
    data = hub.file(*key)
    hub.tampered[key] = data[:-10] + b"0123456789"  # same size, wrong bytes
    root = str(tmp_path / "w")
    with pytest.raises(ValueError, match="checksum mismatch for .*model.safetensors"):
        weights.download(root, log=lambda m: None)
    assert not os.path.exists(os.path.join(root, "gpt2-medium", "model.safetensors"))
    assert not os.path.exists(os.path.join(root, "gpt2-medium", "model.safetensors.part"))


def test_clip_checked_against_the_sha256_in_its_url(hub, tmp_path, monkeypatch):
    wrong = "0" * 64
    hub.files[f"/clip/{wrong}/ViT-B-32.pt"] = hub.files[f"/clip/{hub.clip_sha}/ViT-B-32.pt"]
    monkeypatch.setenv("ZEROCAP_CLIP_URL", f"{hub.url}/clip/{wrong}/ViT-B-32.pt")
    with pytest.raises(ValueError, match=f"checksum mismatch .*expected sha256 {wrong}"):
        weights.download(str(tmp_path / "w"), log=lambda m: None)


def test_interrupted_download_resumes(hub, tmp_path):
    root = tmp_path / "w"
    data = hub.files[f"/clip/{hub.clip_sha}/ViT-B-32.pt"]
    part = root / "clip" / "ViT-B-32.pt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    weights.download(str(root), log=lambda m: None)
    assert (root / "clip" / "ViT-B-32.pt").read_bytes() == data


def test_ensure_offline_names_the_missing_file_and_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"model weights missing: .*gpt2-medium/config.json.*script/download-weights"):
        weights.ensure(str(tmp_path / "none"))


def test_ensure_downloads_when_online_and_sizes_are_checked(hub, tmp_path):
    root = str(tmp_path / "w")
    lm, clip = weights.ensure(root, log=lambda m: None)
    assert os.path.isfile(clip) and os.path.isdir(lm)
    with open(clip, "ab") as f:
        f.write(b"extra")
    with pytest.raises(ValueError, match="has .* bytes but the manifest says"):
        weights.ensure(root)


def test_failed_download_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("ZEROCAP_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ValueError, match="the download failed: cannot reach 127.0.0.1:9 to download .* \\(connection"
                                         " refused\\); without a network, copy the file to .* by hand"):
        weights.ensure(str(tmp_path / "w"))


def test_download_script(hub, tmp_path):
    root = tmp_path / "w"
    r = subprocess.run([sys.executable, os.path.join(ROOT_DIR, "script", "download-weights"), "--root", str(root)],
                       capture_output=True, text=True, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert "weights ready" in r.stdout and (root / "manifest.json").exists()
    shutil.rmtree(root / "clip")
    hub.files.clear()  # OpenAI's URL answers 404 now
    r = subprocess.run([sys.executable, os.path.join(ROOT_DIR, "script", "download-weights"), "--root", str(root)],
                       capture_output=True, text=True, env=dict(os.environ))
    assert r.returncode == 2 and "HTTP 404" in r.stderr
    r = subprocess.run([sys.executable, os.path.join(ROOT_DIR, "script", "download-weights"), "--lm", "gpt-j"],
                       capture_output=True, text=True, env=dict(os.environ))
    assert r.returncode == 2 and "--lm 'gpt-j': choose one of gpt2-medium, gpt-neo-125M, or give a Hugging Face" \
        " repo (OWNER/NAME)" in r.stderr


def test_second_lm_downloads_beside_the_first_and_the_manifest_keeps_both(hub, tmp_path):
    from tiny_models import write_tiny_gpt_neo

    hub.serve_lm(write_tiny_gpt_neo(str(tmp_path / "neo-src")), "EleutherAI/gpt-neo-125m")
    root = str(tmp_path / "w")
    weights.download(root, log=lambda m: None)
    n = len(hub.requests)
    manifest = weights.download(root, log=lambda m: None, lm="gpt-neo-125M", clip=False)
    assert all("gpt-neo-125m" in p for p in hub.requests[n:])  # only the new LM was fetched
    files = {e["file"] for e in manifest["files"]}
    assert {"gpt2-medium/model.safetensors", "gpt-neo-125M/model.safetensors", "clip/ViT-B-32.pt"} <= files
    assert weights.missing(root, lm="gpt-neo-125M") == [] and weights.missing(root) == []
    with pytest.raises(ValueError, match="unknown language model 'gpt-j'; choose one of gpt2-medium, gpt-neo-125M"):
        weights.download(root, lm="gpt-j")


def test_ensure_fetches_only_what_is_asked(hub, tmp_path):
    root = str(tmp_path / "w")
    weights.ensure(root, log=lambda m: None, lm=None)  # CLIP only: the caller has its own LM
    assert os.path.isfile(os.path.join(root, "clip", "ViT-B-32.pt"))
    assert not os.path.exists(os.path.join(root, "gpt2-medium"))
    assert all("/clip/" in p for p in hub.requests)


def test_no_network_is_one_line_naming_the_host_and_the_hand_copy(tmp_path, monkeypatch):
    import requests

    from zerocap import InputError

    def offline(url, **kw):
        raise requests.ConnectionError("HTTPSConnectionPool(host='huggingface.co', port=443): Max retries exceeded"
                                       " (Caused by NameResolutionError(\"Failed to resolve 'huggingface.co'\"))")

    monkeypatch.setattr(requests.Session, "get", lambda self, url, **kw: offline(url))
    with pytest.raises(InputError) as e:
        hub_client.Fetcher(str(tmp_path)).get("https://huggingface.co/x/resolve/main/config.json", "lm/config.json")
    said = str(e.value)
    assert said == ("cannot reach huggingface.co to download https://huggingface.co/x/resolve/main/config.json (the"
                    f" name does not resolve: no network or no DNS); without a network, copy the file to"
                    f" {tmp_path / 'lm' / 'config.json'} by hand (README: Weights)")


def test_any_pair_from_the_hub_is_fetched_verified_and_served(hub, tmp_path, monkeypatch):
    """`download-weights --lm OWNER/NAME --clip OWNER/NAME --use`: a sharded Llama-style LM and an
    OpenCLIP folder from the (loopback) hub, checksums in the manifest, and models.json naming the
    pair -- which ZeroCap.load, the command line and the container then load."""
    import json

    from tiny_models import write_tiny_lm, write_tiny_open_clip
    from zerocap import ZeroCap

    src = tmp_path / "src"
    lm = write_tiny_lm(str(src / "lm"), "llama")
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(lm).save_pretrained(lm, max_shard_size="1MB")  # shards + index
    os.remove(os.path.join(lm, "model.safetensors")) if os.path.exists(os.path.join(lm, "model.safetensors")) else None
    assert os.path.isfile(os.path.join(lm, "model.safetensors.index.json"))
    hub.serve_lm(lm, "meta-llama/Tiny-Llama")
    hub.serve_lm(write_tiny_open_clip(str(src / "oc")), "laion/Tiny-CLIP")
    root = tmp_path / "w"
    script = os.path.join(ROOT_DIR, "script", "download-weights")
    r = subprocess.run([sys.executable, script, "--root", str(root), "--lm", "meta-llama/Tiny-Llama", "--clip",
                        "laion/Tiny-CLIP", "--use"], capture_output=True, text=True, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    shards = [f for f in os.listdir(root / "Tiny-Llama") if f.startswith("model-")]
    assert len(shards) > 1
    manifest = {e["file"]: e for e in json.loads((root / "manifest.json").read_text())["files"]}
    assert all(len(manifest[os.path.join("Tiny-Llama", f)]["sha256"]) == 64 for f in shards)
    assert "clip/Tiny-CLIP/open_clip_model.safetensors" in manifest
    assert json.loads((root / "models.json").read_text()) == {"lm": "Tiny-Llama", "clip": "clip/Tiny-CLIP"}
    n = len(hub.requests)  # again: everything verified, nothing fetched
    assert subprocess.run([sys.executable, script, "--root", str(root), "--lm", "meta-llama/Tiny-Llama", "--clip",
                           "laion/Tiny-CLIP"], capture_output=True, text=True, env=dict(os.environ)).returncode == 0
    assert hub.requests[n:] == []  # the same repos at the same revision: nothing asked
    monkeypatch.setenv("ZEROCAP_WEIGHTS", str(root))
    monkeypatch.setenv("ZEROCAP_OFFLINE", "1")
    engine = ZeroCap.load(device="cpu")
    assert engine.lm.config.model_type == "llama" and type(engine.scorer.clip).__module__.startswith("open_clip")
    monkeypatch.setenv("ZEROCAP_LM", "/nowhere/lm")
    with pytest.raises(ValueError, match="/nowhere/lm is not a directory"):
        ZeroCap.load(device="cpu")  # the environment names the pair before models.json
    t5 = src / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5", "is_encoder_decoder": True}))
    (t5 / "model.safetensors").write_bytes(b"0")
    hub.serve_lm(str(t5), "google-t5/t5-small")
    monkeypatch.delenv("ZEROCAP_OFFLINE")
    n = len(hub.requests)
    r = subprocess.run([sys.executable, script, "--root", str(root), "--lm", "google-t5/t5-small"],
                       capture_output=True, text=True, env=dict(os.environ))
    assert r.returncode == 2 and "google-t5/t5-small holds a sequence-to-sequence (encoder-decoder) model" in r.stderr
    assert hub.requests[n:] == ["/google-t5/t5-small/resolve/main/config.json"]  # refused before its weights
    assert not os.path.exists(root / "t5-small" / "config.json")


def test_a_malformed_models_json_is_said_in_words(tmp_path, monkeypatch):
    root = tmp_path / "w"
    root.mkdir()
    monkeypatch.setenv("ZEROCAP_WEIGHTS", str(root))
    (root / "models.json").write_text("{not json")
    with pytest.raises(ValueError, match="models.json cannot be read as JSON"):
        weights.chosen()
    (root / "models.json").write_text('{"lm": 3}')
    with pytest.raises(ValueError, match='must hold {"lm": "<folder under the root>", "clip": "<file or folder under'):
        weights.chosen()
    (root / "models.json").write_text('{"lm": "Tiny", "clip": "clip/Tiny"}')
    assert weights.chosen() == (str(root / "Tiny"), str(root / "clip" / "Tiny"))
