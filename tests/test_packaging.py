"""cog.yaml, requirements.txt and the package metadata agree with each other and with Cog."""
import os
import subprocess
import sys

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


def test_dockerignore_keeps_weights_and_git_ignores_them():
    ignored = [line.strip() for line in open(os.path.join(ROOT, ".dockerignore")) if not line.startswith("#")]
    assert not any(line.startswith("weights") for line in ignored)
    gitignore = open(os.path.join(ROOT, ".gitignore")).read().split()
    assert "/weights/*" in gitignore and "!/weights/README.md" in gitignore and "!/weights/manifest.json" in gitignore
