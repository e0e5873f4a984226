"""bench/benchmark.py runs end to end (a GPU session must not spend its time on a broken script)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_tiny_benchmark_writes_its_table(tmp_path):
    out = tmp_path / "RESULTS.md"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "benchmark.py"), "--tiny", "--tokens", "1",
                          "--batch", "2", "--repeats", "1", "--results", str(out), "--concurrency", "1,2",
                          "--compile", "no-such-mode",  # an experiment that fails is reported, not fatal
                          "--pt-sentences", "1", "--pt-tokens", "3", "--mixed-requests", "2"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    text = out.read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| engine")}
    pt = {name: rows.pop(name) for name in ("engine, fast form, 1 request", "engine, exact form, 1 request")}
    assert set(rows) == {"engine, exact form (--form exact)", "engine, fast form (default), eager"}
    assert all(line.split("|")[6].strip() == "yes" for line in rows.values())  # beams = the reference's
    # the pseudo-token method: their code's sentences, captions and beams, alone and 4 together
    assert all(line.split("|")[5].strip() == "yes" for line in pt.values())
    assert "| their code (tests/reference_pseudo_tokens.py) |" in text
    assert "4 requests together (fast form):" in text and "each with its output alone: yes" in text
    assert "| reference decoder (tests/) |" in text and "Batch of 2 images" in text
    assert "| zerocap.lm_backward | 5 |" in text and "| zerocap.clip_candidates | 5 |" in text
    assert "engine, fast form, compiled (no-such-mode): failed: InputError: unknown compile mode" in text
    levels = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and
              line.split("|")[2].strip() in ("2", "4") and line.split("|")[1].strip() in ("1", "2")]
    assert levels == ["1", "2"]  # captions/s with 1 and 2 clients in flight
    assert "| 30% | 10 |" in text and "| 50% | 10 |" in text  # other settings among light requests (5 clients x 2)
    assert "A heavy request (beam 6, top-k 256, 20 tokens, 6 iterations;" in text
