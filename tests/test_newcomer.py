"""What a newcomer reading the README meets: the Python API finds the weights the command line
finds, a result's to_dict() and the --json record differ only as said, inputs may come anywhere
among the flags, hidden files follow one rule, and the progress bar shows on any terminal."""
import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

from zerocap import InputError, ZeroCap
from zerocap.cli import main
from zerocap.jobs.inputs import find_inputs

FAST = ["--top-k", "16", "--beam-size", "2", "--max-tokens", "1", "--num-iterations", "1", "--device", "cpu"]


def test_the_library_finds_the_weights_where_the_command_line_does(weights_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no weights/ here
    monkeypatch.setenv("ZEROCAP_WEIGHTS", weights_root)
    zc = ZeroCap.load(device="cpu")
    assert zc.lm.config.n_layer >= 1
    monkeypatch.setenv("ZEROCAP_WEIGHTS", str(tmp_path / "none"))
    monkeypatch.setenv("ZEROCAP_OFFLINE", "1")
    with pytest.raises(InputError, match=r"model weights missing: .*none/gpt2-medium/config.json .*run `python"
                                         r" script/download-weights` \(offline mode is on"):
        ZeroCap.load(device="cpu")


def test_the_json_record_is_to_dict_plus_what_the_readme_says(capsys, weights_root, images, monkeypatch):
    monkeypatch.setenv("ZEROCAP_WEIGHTS", weights_root)
    assert main(["caption", images[0], *FAST, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    result = ZeroCap.load(device="cpu").caption([images[0]], top_k=16, beam_size=2, max_tokens=1,
                                                num_iterations=1)[0].to_dict()
    assert set(record) == set(result) | {"zerocap", "image", "source", "settings"}  # the README's four
    assert {k: record[k] for k in result if k != "timing"} == {k: v for k, v in result.items() if k != "timing"}
    assert main(["arithmetic", images[0], images[1], "--weights", "1", "-1", *FAST, "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == set(result)  # arithmetic: to_dict() itself


def test_inputs_may_come_after_other_flags(tmp_path, images, weights_root, monkeypatch, capsys):
    monkeypatch.setenv("ZEROCAP_WEIGHTS", weights_root)
    listed = tmp_path / "l.txt"
    listed.write_text(images[1] + "\n")
    assert main(["caption", images[0], "--list", str(listed), images[2], *FAST, images[3], "--json"]) == 0
    got = [json.loads(x)["image"] for x in capsys.readouterr().out.splitlines()]
    assert sorted(got) == sorted(images)
    assert main(["caption", images[0], "--no-such-flag", *FAST]) == 2  # a flag that is not one: one line
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unrecognized arguments: --no-such-flag" in err


def test_hidden_files_follow_one_rule_in_folders_and_patterns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d" / ".thumbs").mkdir(parents=True)
    for name in ("d/a.png", "d/.b.png", "d/.thumbs/c.png"):
        (tmp_path / name).write_bytes(b"x")
    assert [i.name for i in find_inputs(["d"])] == ["d/a.png"]
    assert [i.name for i in find_inputs(["d/*"])] == ["d/a.png"]
    assert [i.name for i in find_inputs(["d/**/*.png"])] == ["d/a.png"]
    assert [i.name for i in find_inputs(["d/.b.png", "d/.thumbs", "d/.*.png"])] == ["d/.b.png", "d/.thumbs/c.png"]


def _on_a_terminal(columns, rows):
    """stderr of a job's progress bar on a pseudo-terminal of that size."""
    code = ("import sys, time\nfrom zerocap.output import progress_bar\nbar = progress_bar('img')\n"
            "bar.reset(total=3)\nfor _ in range(3):\n    time.sleep(0.4)\n    bar.update(1)\nbar.close()\n")
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    child = subprocess.Popen([sys.executable, "-c", code], stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    out = b""
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        out += data
    child.wait(timeout=60)
    os.close(leader)
    return out.decode(errors="replace")


@pytest.mark.parametrize("columns,rows", [(100, 30), (0, 0)])
def test_the_progress_bar_shows_whatever_size_the_terminal_reports(columns, rows):
    assert "3/3" in _on_a_terminal(columns, rows)


def test_a_run_logged_to_a_file_writes_progress_lines(tmp_path, images, lm_dir, clip_file):
    """stderr not a terminal: a progress line at most every ZEROCAP_PROGRESS_SECONDS (10 by default),
    so a long redirected run never looks hung."""
    import subprocess
    import sys

    env = {**os.environ, "ZEROCAP_PROGRESS_SECONDS": "0"}
    proc = subprocess.run([sys.executable, "-m", "zerocap", "caption", images[0], images[1], "--lm", lm_dir, "--clip",
                           clip_file, *FAST, "--out", str(tmp_path / "r.jsonl")], env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    progress = [x for x in proc.stderr.splitlines() if x.startswith("zerocap: progress: ")]
    assert progress and any("token 1/1" in x for x in progress), proc.stderr
    assert progress[-1].startswith("zerocap: progress: 2/2 images done"), progress


def test_the_readmes_tiny_weights_try_runs(tmp_path, images):
    """`python script/tiny-weights DIR`, then a caption from it: the README's try-before-download."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    folder = tmp_path / "tiny"
    made = subprocess.run([sys.executable, os.path.join(root, "script", "tiny-weights"), str(folder)],
                          capture_output=True, text=True)
    assert made.returncode == 0 and "gibberish by design" in made.stdout, made.stderr
    assert made.stderr == ""  # no progress bar of transformers' own
    env = {**os.environ, "ZEROCAP_WEIGHTS": str(folder), "ZEROCAP_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "zerocap", "caption", "examples/cat.jpg", "--max-tokens", "2",
                          "--json"], env=env, capture_output=True, text=True, cwd=root)  # the README's image
    assert run.returncode == 0 and json.loads(run.stdout)["best_mixed"].startswith("Image of a"), run.stderr
    again = subprocess.run([sys.executable, os.path.join(root, "script", "tiny-weights"), str(folder)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "is not an empty folder" in again.stderr


def test_the_readme_states_the_real_load_signature_and_result_fields(images, engine, tmp_path):
    """README text that restates code: ZeroCap.load's signature, and where a pseudo-token clip
    result keeps its frames (`details`, flattened by to_dict())."""
    import inspect

    from zerocap import ZeroCap
    from zerocap.pseudo_tokens.clips import ClipFrames

    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    params = inspect.signature(ZeroCap.load).parameters
    said = "`ZeroCap.load(" + ", ".join(f"{n}={p.default!r}" for n, p in params.items()) + ")`"
    assert said in readme, said
    frames = ClipFrames([0.0, 0.5], 3, "every 10th frame")
    assert set(frames.to_dict()) == {"frame_times", "frames", "frames_sampled", "sampling"}
    for name in ("times", "sampled", "sampling"):
        assert hasattr(frames, name) and f"`{name}`" in readme
    for name in frames.to_dict():
        assert f"`{name}`" in readme


def test_advice_fits_where_the_model_is(tmp_path, monkeypatch, lm_dir, clip_file, images, capsys):
    """A path the user gave is theirs to mend (no download advice); a Python caller is told what to
    pass, not a command-line flag."""
    monkeypatch.setenv("ZEROCAP_WEIGHTS", str(tmp_path / "w"))
    assert main(["caption", images[0], "--lm", str(tmp_path / "nonexistent"), "--clip", clip_file, *FAST]) == 2
    err = capsys.readouterr().err
    assert "nonexistent is not a directory; check the path" in err and "download-weights" not in err
    assert main(["caption", images[0], "--lm", lm_dir, "--clip", str(tmp_path / "no.pt"), *FAST]) == 2
    assert "CLIP weights not found" in (err := capsys.readouterr().err) and "download-weights" not in err
    if not __import__("torch").cuda.is_available():
        with pytest.raises(InputError, match=r"no CUDA GPU is available; use the CPU \(device 'cpu'"):
            ZeroCap.load(lm_dir, clip_file, device="cuda")


def test_a_truncated_safetensors_file_is_one_line(tmp_path, lm_dir, clip_file):
    """The LM's and a Hugging Face CLIP folder's weights, cut short: said in words, as OpenCLIP and
    OpenAI checkpoints are."""
    import shutil

    from tiny_models import write_tiny_hf_clip

    lm = shutil.copytree(lm_dir, tmp_path / "lm")
    data = (lm / "model.safetensors").read_bytes()
    (lm / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cannot load the language model from .*lm: "):
        ZeroCap.load(str(lm), clip_file, device="cpu")
    hf = write_tiny_hf_clip(str(tmp_path / "hf"))
    weights = os.path.join(hf, "model.safetensors")
    data = open(weights, "rb").read()
    open(weights, "wb").write(data[:100])
    with pytest.raises(InputError, match="cannot load CLIP from .*hf: "):
        ZeroCap.load(lm_dir, hf, device="cpu")


def test_python_loads_and_captions_quietly(lm_dir, clip_file, images):
    """The README's "loads quietly": nothing on stderr from load to the first caption (transformers
    warned of an unset loss_type at the first perplexity; issue 39, item 9)."""
    code = ("import sys; from zerocap import ZeroCap; zc = ZeroCap.load(sys.argv[1], sys.argv[2], device='cpu');"
            " zc.caption([sys.argv[3]], max_tokens=1, beam_size=2, top_k=8)")
    r = subprocess.run([sys.executable, "-c", code, lm_dir, clip_file, images[0]], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stderr == "", r.stderr
