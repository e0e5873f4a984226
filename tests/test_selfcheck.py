"""The compiled path checks itself (zerocap/selfcheck.py): a probe caption decoded compiled and
eagerly; when they differ the engine decodes eagerly from then on and says why -- in Python,
`zerocap selfcheck` and the container."""
import json
import os

import pytest
import torch

from test_cog_server import SMALL, Server, data_uri
from zerocap import ZeroCap, selfcheck
from zerocap.cli import main


@pytest.fixture
def identity_compiled(lm_dir, clip_file):
    """An engine in the static layout with torch.compile as the identity (no compiling cost)."""
    real = torch.compile
    torch.compile = lambda fn, **kw: fn
    try:
        return ZeroCap.load(lm_dir, clip_file, device="cpu", compile=True)
    finally:
        torch.compile = real


def test_a_compiled_step_that_agrees_keeps_serving(identity_compiled):
    result = selfcheck.check(identity_compiled)
    assert result.path == "compiled" and result.agree is True and identity_compiled.compiled is not None
    assert set(result.seconds) == {"compiled", "eager"} and "gives eager decoding's beams" in result.line()


def test_a_wrong_compiled_result_makes_the_engine_decode_eagerly(identity_compiled, monkeypatch, images):
    shift = identity_compiled.compiled.shift
    monkeypatch.setattr(identity_compiled.compiled, "shift", lambda *a, **k: shift(*a, **k).flip(-1).clone())
    result = selfcheck.check(identity_compiled)
    assert result.path == "eager" and result.agree is False and identity_compiled.compiled is None
    assert "beams differ" in result.line() and "the beams differ" in result.report()
    eager = ZeroCap(identity_compiled.lm, identity_compiled.tokenizer, identity_compiled.scorer, device="cpu")
    got = identity_compiled.caption([images[0]], top_k=32, beam_size=2, max_tokens=3)[0]
    assert [b.text for b in got.beams] == [b.text for b in eager.caption([images[0]], top_k=32, beam_size=2,
                                                                         max_tokens=3)[0].beams]


def test_a_failing_compile_is_said(identity_compiled, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(identity_compiled.compiled, "_iteration", broken)
    result = selfcheck.check(identity_compiled)
    assert result.path == "eager" and "torch.compile failed (RuntimeError: no C++ compiler)" in result.line()


def test_the_selfcheck_command_reports_device_path_time_and_agreement(capsys, lm_dir, clip_file):
    assert main(["selfcheck", "--lm", lm_dir, "--clip", clip_file, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "device:    cpu" in out and "path:      eager (not compiled)" in out
    assert "eager:     " in out and "s per probe caption" in out and "eager beams:" in out


def test_selfcheck_refuses_a_bad_device_or_compile_mode_in_words(capsys, lm_dir, clip_file):
    assert main(["selfcheck", "--lm", lm_dir, "--clip", clip_file, "--device", "tpu"]) == 2
    assert "unknown device 'tpu'; use cpu, cuda, cuda:N or auto" in capsys.readouterr().err
    assert main(["selfcheck", "--compile", "fast"]) == 2  # argparse's mistakes are one line too
    assert "invalid choice: 'fast'" in capsys.readouterr().err


@pytest.mark.slow
def test_the_container_serves_eagerly_when_its_compiled_step_is_wrong(weights_root, images):
    """ZEROCAP_COMPILE=default on the CPU, compiled for real, with a wrong compiled result (the
    tests' hook, tests/hooks/sitecustomize.py): setup says so in one line, the server is healthy,
    and predictions run eagerly."""
    hooks = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hooks")
    s = Server({"ZEROCAP_WEIGHTS": weights_root, "ZEROCAP_OFFLINE": "1", "ZEROCAP_COMPILE": "default",
                "ZEROCAP_MAX_BATCH": "1", "ZEROCAP_TEST_WRONG_COMPILED": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [hooks, os.environ.get("PYTHONPATH")])),
                "TORCHINDUCTOR_CACHE_DIR": os.path.join(weights_root, "..", "inductor-selfcheck")})
    try:
        assert s.wait(timeout=900)["status"] == "READY", s.log_tail()
        assert "decoding eager on cpu: the compiled step's beams differ from eager decoding's" in s.log_tail(200_000)
        out = s.predict(image=data_uri(images[0]), **SMALL)
        assert out["status"] == "succeeded" and out["metrics"]["compiled_step"] == 0, json.dumps(out)[:2000]
    finally:
        s.stop()
