"""cog.yaml, requirements.txt and the package metadata agree with each other and with Cog."""
import os
import re
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cog_yaml():
    cfg = yaml.safe_load(open(os.path.join(ROOT, "cog.yaml")))
    assert cfg["build"]["gpu"] is True
    assert cfg["build"]["python_version"] == "3.12"
    assert cfg["build"]["cuda"] in ("12.8", "13.0")
    assert cfg["run"] == "predict.py:Predictor"
    assert os.path.isfile(os.path.join(ROOT, cfg["build"]["python_requirements"]))
    assert "predict" not in cfg  # the deprecated key


def test_predictor_is_a_current_cog_runner():
    import cog

    sys.path.insert(0, ROOT)
    import predict

    assert issubclass(predict.Predictor, cog.BaseRunner) and not issubclass(predict.Predictor, cog.BasePredictor)
    assert "run" in vars(predict.Predictor) and "predict" not in vars(predict.Predictor)


def check(path):
    return subprocess.run([sys.executable, os.path.join(ROOT, "script", "check-requirements"), "--offline", path],
                          capture_output=True, text=True)


def test_requirements_are_exact_pins_cog_knows(tmp_path):
    assert check(os.path.join(ROOT, "requirements.txt")).returncode == 0
    bad = tmp_path / "r.txt"
    bad.write_text("torch==2.11.0\ntorchvision==0.25.0\n")
    assert "not a pair Cog knows" in check(str(bad)).stderr
    bad.write_text("torch>=2.11\n")
    assert "not an exact pin" in check(str(bad)).stderr
    bad.write_text("torch==2.11.0\ntorchvision==0.26.0\nsetuptools==82.0.0\n")
    assert "setuptools<82" in check(str(bad)).stderr


def dockerignored(path: str) -> bool:
    """Whether Docker's build context leaves `path` out, by .dockerignore's rules (Go's filepath.Match
    per pattern, ** for any depth, a match on a folder leaves out what is in it, ! re-includes)."""
    out = False
    for line in open(os.path.join(ROOT, ".dockerignore")):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = re.escape(line.lstrip("!").strip("/"))
        pattern = pattern.replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if re.fullmatch(pattern + "(/.*)?", path):
            out = not keep
    return out


def test_the_build_context_has_what_the_image_needs_and_nothing_half_done():
    for needed in ("cog.yaml", "requirements.txt", "predict.py", "zerocap/engine.py",
                   "zerocap/data/forbidden_tokens.json",
                   "weights/gpt2-medium/model.safetensors", "weights/clip/ViT-B-32.pt", "weights/manifest.json",
                   ".cog/openapi_schema.json", "weights/models.json",  # another pair (download-weights --use)
                   "weights/Qwen2.5-0.5B/model-00001-of-00002.safetensors",
                   "weights/clip/CLIP-ViT-B-32-laion2B-s34B-b79K/open_clip_model.safetensors"):
        assert not dockerignored(needed), needed
    for left_out in ("weights/gpt2-medium/model.safetensors.part", "weights/clip/ViT-B-32.pt.part", "x.part",
                     "zerocap/__pycache__/engine.cpython-312.pyc", ".venv/lib/python3.11/site-packages/torch/lib/x.so",
                     "tests/test_cli.py", "bench/benchmark.py", "examples/cat.jpg", ".git/HEAD", ".ci/run"):
        assert dockerignored(left_out), left_out


def test_git_ignores_the_weights_but_their_readme_and_manifest():
    gitignore = open(os.path.join(ROOT, ".gitignore")).read().split()
    assert "/weights/*" in gitignore and "!/weights/README.md" in gitignore and "!/weights/manifest.json" in gitignore


@pytest.mark.slow
def test_pins_that_contradict_each_other_are_caught(tmp_path):
    """Against the package index: transformers 5.24 needs huggingface-hub >= 1.31."""
    bad = tmp_path / "r.txt"
    bad.write_text("torch==2.11.0\ntorchvision==0.26.0\ntransformers==5.24.0\nhuggingface-hub==0.36.0\n")
    run = subprocess.run([sys.executable, os.path.join(ROOT, "script", "check-requirements"), str(bad)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 1 and "do not resolve together" in run.stderr
