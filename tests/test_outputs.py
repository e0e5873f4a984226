"""What zerocap writes: only its own files, never an input; symlinks and modes kept; every
output checked before any work, every mistake one line."""
import errno
import json
import os
import stat

import pytest

from zerocap import InputError
from zerocap.cli import main
from zerocap.jobs.results import ResultsFile

FAST = ["--top-k", "16", "--beam-size", "2", "--max-tokens", "1", "--num-iterations", "1", "--device", "cpu"]


@pytest.fixture
def no_models(monkeypatch):
    """Fail the test if the models load: these mistakes must be said before any work."""
    import zerocap.engine

    monkeypatch.setattr(zerocap.engine.ZeroCap, "load", lambda *a, **k: pytest.fail("models loaded"))


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def foreign_files(tmp_path, images):
    """Files that are not zerocap results: each must come out of a job byte for byte."""
    gif = tmp_path / "anim.gif"
    from PIL import Image

    Image.new("P", (4, 4)).save(gif)
    files = {
        "annotations.json": json.dumps({"images": [], "annotations": []}).encode(),  # one line, no newline
        "notes.txt": b"my notes\nsecond line without newline",
        "hand.jsonl": b'{"image": "a.png", "caption": "written by hand"}\n',
        "list-of-lists.jsonl": b'{"zerocap": "captions/1", "image": ["a.png"], "source": "/a.png"}\n',
        "other-kind.jsonl": b'{"zerocap": "scores/1", "image": "a.png", "BLEU-1": 1.0}\n',
    }
    paths = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths[name] = tmp_path / name
    paths["anim.gif"] = gif
    return paths


def test_out_never_touches_a_file_that_is_not_zerocaps(tmp_path, images, capsys, no_models, lm_dir, clip_file):
    for name, path in foreign_files(tmp_path, images).items():
        before = path.read_bytes()
        code, _, err = run(capsys, "caption", images[0], "--out", path, "--lm", lm_dir, "--clip", clip_file)
        assert code == 2 and "Traceback" not in err, err
        assert any(m in err for m in ("is not a zerocap captions file", "is one of the inputs",
                                      "a zerocap line without the 'image' and 'source'")), err
        assert path.read_bytes() == before, name


@pytest.mark.parametrize("which", ["image", "list", "gif"])
def test_an_input_is_never_an_output(tmp_path, images, capsys, no_models, which, lm_dir, clip_file):
    import shutil

    gif = tmp_path / "in.gif"
    from PIL import Image

    Image.new("RGB", (8, 8), (1, 2, 3)).save(gif)
    img = tmp_path / "in.png"
    shutil.copy(images[0], img)
    listed = tmp_path / "list.txt"
    listed.write_text(f"{img}")  # one line, no newline: what --out used to cut
    target = {"image": img, "list": listed, "gif": gif}[which]
    before = target.read_bytes()
    args = ["caption", img, gif, "--list", listed, "--lm", lm_dir, "--clip", clip_file]
    # spelled another way than the input, from the same folder: still the same file
    code, _, err = run(capsys, *args, "--out", os.path.join(str(tmp_path), ".", target.name))
    assert code == 2 and "is one of the inputs" in err and "never writes over its inputs" in err, err
    assert target.read_bytes() == before


def test_eval_never_writes_over_its_captions_or_references(tmp_path, capsys, images):
    caps = tmp_path / "c.jsonl"
    caps.write_text(json.dumps({"image": "a.jpg", "best_mixed": "a cat"}) + "\n")
    refs = tmp_path / "r.json"
    refs.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                "annotations": [{"image_id": 1, "caption": "a cat"}]}))
    os.symlink(caps, tmp_path / "link.jsonl")
    for target in (caps, refs, tmp_path / "link.jsonl", tmp_path / "." / "r.json"):
        before = (caps.read_bytes(), refs.read_bytes())
        code, _, err = run(capsys, "eval", caps, "--refs", refs, "--per-image", target, "--skip", "CLIP-S,METEOR,SPICE")
        assert code == 2 and "is one of the inputs" in err, err
        assert (caps.read_bytes(), refs.read_bytes()) == before


def test_eval_says_a_bad_per_image_path_before_scoring(tmp_path, capsys, monkeypatch):
    import zerocap.evaluate

    monkeypatch.setattr(zerocap.evaluate, "evaluate", lambda *a, **k: pytest.fail("scored first"))
    caps, refs = tmp_path / "c.jsonl", tmp_path / "r.json"
    caps.write_text("{}")
    refs.write_text("{}")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for target, message in ((tmp_path / "no" / "such" / "x.jsonl", "the folder"), (tmp_path, "is a folder"),
                            (notes, "is not a zerocap scores file")):
        code, _, err = run(capsys, "eval", caps, "--refs", refs, "--per-image", target)
        assert code == 2 and message in err and "Traceback" not in err, err
    assert notes.read_text() == "mine"


@pytest.mark.parametrize("where,message", [
    ("missing/out.jsonl", "the folder"),
    (".", "is a folder"),
    ("/dev/null", "is not a regular file"),
    ("fifo", "is not a regular file"),
])
def test_out_that_cannot_be_a_results_file_is_said_before_the_models_load(tmp_path, images, capsys, no_models,
                                                                          where, message, monkeypatch, lm_dir,
                                                                          clip_file):
    monkeypatch.chdir(tmp_path)
    if where == "fifo":
        os.mkfifo(tmp_path / "fifo")
    code, _, err = run(capsys, "caption", images[0], "--out", where, "--lm", lm_dir, "--clip", clip_file)
    assert code == 2 and message in err and "Traceback" not in err, err


def test_out_on_a_read_only_file_system_is_one_line(tmp_path, images, capsys, no_models, monkeypatch, lm_dir,
                                                    clip_file):
    """The kernel's answer for a read-only file system (EROFS) is simulated: root writes anyway."""
    real_open = os.open

    def read_only(path, flags, *a, **k):
        if str(path).endswith("ro.jsonl") and flags & os.O_RDWR:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", read_only)
    code, _, err = run(capsys, "caption", images[0], "--out", tmp_path / "ro.jsonl", "--lm", lm_dir, "--clip",
                       clip_file)
    assert code == 2 and "cannot write --out" in err and "Read-only file system" in err, err
    assert "Traceback" not in err


def record(name, error=None):
    base = {"image": name, "source": "/data/" + name}
    return {**base, "error": error} if error else {**base, "best_mixed": "x"}


def test_a_full_disk_is_one_line_and_the_job_resumes(tmp_path, monkeypatch):
    out = tmp_path / "o.jsonl"
    r = ResultsFile(str(out))
    r.write(record("a"))
    import zerocap.jobs.results

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(zerocap.jobs.results.os, "write", full)
    with pytest.raises(InputError, match="cannot write .*No space left on device; what was written before is kept"):
        r.write(record("b"))
    monkeypatch.undo()
    r.close()
    assert [json.loads(x)["image"] for x in out.read_text().splitlines()] == ["a"]


def test_retry_failed_keeps_the_symlink_and_the_mode(tmp_path):
    real = tmp_path / "store" / "captions.jsonl"
    real.parent.mkdir()
    link = tmp_path / "captions.jsonl"
    r = ResultsFile(str(real))
    for rec in (record("a"), record("b", "not an image: b"), record("c")):
        r.write(rec)
    r.close()
    os.chmod(real, 0o600)
    os.symlink(real, link)
    r = ResultsFile(str(link), retry_failed=True)
    r.write(record("b"))
    r.close()
    assert os.path.islink(link) and os.readlink(link) == str(real)
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o600
    lines = [json.loads(x) for x in real.read_text().splitlines()]
    assert [x["image"] for x in lines] == ["a", "c", "b"] and all("error" not in x for x in lines)
    assert not [p for p in real.parent.iterdir() if p.name != "captions.jsonl"]  # no temporary file left


def test_a_crash_mid_line_is_repaired_only_in_zerocaps_own_file(tmp_path):
    ours = tmp_path / "ours.jsonl"
    ours.write_bytes(b'{"zerocap": "captions/1", "image": "a", "sou')  # the first line, cut
    ResultsFile(str(ours)).close()
    assert ours.read_bytes() == b"" or not ours.exists()
    theirs = tmp_path / "theirs.json"
    theirs.write_bytes(b'{"images": []}')
    with pytest.raises(InputError, match="is not a zerocap captions file"):
        ResultsFile(str(theirs))
    assert theirs.read_bytes() == b'{"images": []}'


def test_json_with_out_prints_the_lines_and_says_where_they_went(tmp_path, images, capsys, lm_dir, clip_file):
    out = tmp_path / "c.jsonl"
    code, stdout, err = run(capsys, "caption", images[0], "--out", out, "--json", "--lm", lm_dir, "--clip",
                            clip_file, *FAST)
    assert code == 0 and json.loads(stdout)["image"] == images[0] and f"results in {out}" in err
    assert json.loads(out.read_text()) == json.loads(stdout)  # the same line, resumable either way


@pytest.mark.slow  # a fresh interpreter per command: seconds of imports each
def test_a_reader_that_leaves_early_stops_the_job_quietly(tmp_path, images, lm_dir, clip_file):
    """zerocap caption ... --json | head -1: the rest is not wanted, and no traceback either."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "zerocap", "caption", *images, "--json", "--lm", lm_dir, "--clip", clip_file, *FAST,
           "--batch-size", "1"]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = job.stdout.readline()
    job.stdout.close()  # the reader leaves
    err = job.stderr.read().decode()
    assert job.wait(timeout=120) == 141 and json.loads(first)["image"] == images[0]
    assert "Traceback" not in err and "BrokenPipe" not in err, err
