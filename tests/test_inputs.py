"""A job's inputs: each real file once however it is spelled, loops that end, lists that keep every name."""
import io
import json
import collections
import os
import random
import sys

import pytest

from zerocap import InputError
from zerocap.cli import main
from zerocap.jobs.inputs import find_inputs, glob_files, identify
from zerocap.jobs.results import ResultsFile
from zerocap.jobs.run import run_job

FAST = ["--top-k", "16", "--beam-size", "2", "--max-tokens", "1", "--num-iterations", "1", "--device", "cpu"]


@pytest.fixture
def tree(tmp_path, images):
    """imgs/ with two images, a sub-folder, a symlinked file, a hard link, a symlinked folder, two
    symlink loops (to the root and to a parent) and a dangling link; `real` lists the real files."""
    root = tmp_path / "t"
    sub = root / "imgs" / "sub"
    sub.mkdir(parents=True)
    for i, p in enumerate(images[:3]):
        (root / "imgs" / f"a{i}.png").write_bytes(open(p, "rb").read()) if i < 2 else \
            (sub / "b.png").write_bytes(open(p, "rb").read())
    os.symlink("a0.png", root / "imgs" / "link.png")  # a symlink to a file
    os.link(root / "imgs" / "a1.png", root / "imgs" / "hard.png")  # a hard link
    os.symlink("..", sub / "up")  # a loop to the parent
    os.symlink(str(root), sub / "root")  # a loop to the top
    os.symlink("imgs/sub", root / "alias")  # the sub-folder again
    os.symlink("nowhere.png", root / "imgs" / "dangling.png")
    real = {str(root / "imgs" / "a0.png"), str(root / "imgs" / "a1.png"), str(sub / "b.png")}
    return root, real


def spellings(root, real):
    """Ways to name the real files (and folders that hold them) from `root`."""
    a0, a1 = "imgs/a0.png", "imgs/a1.png"
    return [a0, "./" + a0, str(root / a0), "imgs//a0.png", "imgs/link.png", "imgs/sub/up/a0.png",
            "imgs/sub/root/imgs/a0.png", a1, "imgs/hard.png", "imgs/sub/b.png", "alias/b.png", "alias/../sub/b.png",
            "imgs", "alias", "imgs/sub", "imgs/**/*.png", "**/b.png", "alias/**", "imgs/sub/up/*.png"]


def test_a_file_is_one_input_however_it_is_spelled(tree, monkeypatch):
    root, real = tree
    monkeypatch.chdir(root)
    got = find_inputs(spellings(root, real))
    # the three real files once each, plus the dangling link (an error line later); nothing else
    assert {i.source for i in got if i.exists} == real
    assert len(got) == 4 and [i for i in got if not i.exists][0].name.endswith("dangling.png")
    assert got[0].name == "imgs/a0.png"  # kept under the first spelling met
    assert identify("imgs/hard.png").key == identify("imgs/a1.png").key  # hard links share the file


def test_globs_and_folder_scans_end_on_symlink_loops(tree, monkeypatch):
    root, real = tree
    # a second loop pair, each link pointing at the other's folder: the case that ran 10 minutes
    (root / "p" / "q").mkdir(parents=True)
    os.symlink(str(root / "p"), root / "p" / "q" / "back")
    os.symlink(str(root / "p" / "q"), root / "p" / "fwd")
    (root / "p" / "q" / "deep.png").write_bytes(b"x")
    monkeypatch.chdir(root)
    opened = []  # each real folder is listed a bounded number of times: a loop followed lists without end
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path=".": opened.append(os.path.realpath(path)) or real_scandir(path))
    found = sorted(glob_files("**/*.png"))
    assert max(collections.Counter(opened).values()) == 2, sorted(opened)  # by `**`'s walk, then by `*.png`
    assert found.count("p/q/deep.png") == 1 and "imgs/a0.png" in found  # each real folder once
    assert len({os.path.realpath(f) for f in found}) == len(found) - found.count("imgs/link.png")
    assert "imgs/dangling.png" in found  # as a folder scan finds it: an error line later, not a silence
    opened.clear()
    scanned = find_inputs(["."])
    assert opened and len(opened) == len(set(opened)), sorted(opened)
    assert {i.source for i in scanned if i.exists} == real | {str(root / "p" / "q" / "deep.png")}


def fake_backend(todo):
    """Records as a backend answers them, in reverse order, without models."""
    for index, i in reversed(list(enumerate(todo))):
        yield index, ({"image": i.name, "source": i.source, "best_mixed": "Image of " + i.name} if i.exists else
                      {"image": i.name, "source": i.source, "error": f"image file not found: {i.name}"})


def test_exactly_once_over_random_spellings_and_working_folders(tree, tmp_path):
    """The issue's check: jobs re-run with random spellings, from random folders, into one --out,
    leave one line per real file (and one for the dangling link), however often they run."""
    root, real = tree
    out = tmp_path / "captions.jsonl"
    rng = random.Random(0)
    folders = [root, root / "imgs", root / "imgs" / "sub", tmp_path]
    cwd = os.getcwd()
    try:
        for run in range(12):
            here = rng.choice(folders)
            os.chdir(here)
            names = rng.sample(spellings(root, real), k=rng.randint(1, 8))
            names = [n if os.path.isabs(n) else os.path.relpath(root / n, here) for n in names]
            inputs = find_inputs(names)
            results = ResultsFile(str(out), retry_failed=rng.random() < 0.3)
            run_job(inputs, fake_backend, lambda r: None, results)
            results.close()
            lines = [json.loads(x) for x in out.read_text().splitlines()]
            files = [identify(x["source"]).key for x in lines]  # the file (inode), whatever path named it
            assert len(files) == len(set(files)), f"run {run}: a file twice"
        os.chdir(root)
        results = ResultsFile(str(out))
        run_job(find_inputs(spellings(root, real)), fake_backend, lambda r: None, results)
        results.close()
    finally:
        os.chdir(cwd)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(identify(x["source"]).key for x in lines if "error" not in x) == \
        sorted(identify(f).key for f in real)  # every real file exactly once
    assert len(lines) == 4  # and the dangling link's error line


def test_a_rerun_from_elsewhere_with_other_spellings_captions_nothing_again(tree, tmp_path, capsys, monkeypatch,
                                                                           lm_dir, clip_file):
    root, real = tree
    out = tmp_path / "c.jsonl"
    models = ["--lm", lm_dir, "--clip", clip_file, *FAST]
    monkeypatch.chdir(root)
    assert main(["caption", "imgs", "--out", str(out), *models]) == 1  # the dangling link fails
    assert "captioned 3, failed 1;" in capsys.readouterr().err
    monkeypatch.chdir(root / "imgs" / "sub")
    assert main(["caption", "b.png", "../link.png", "../hard.png", "up", "--out", str(out), *models]) == 1
    err = capsys.readouterr().err
    assert "captioned 0, failed 0 (+1 earlier, kept), skipped 4 already in" in err
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 4 and {x["source"] for x in lines if "error" not in x} == real
    assert {x["image"] for x in lines} == {"imgs/a0.png", "imgs/a1.png", "imgs/sub/b.png", "imgs/dangling.png"}


def test_list_lines_are_names_as_written_and_nul_lists_carry_any_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in (" lead.png", "#hash.png", "new\nline.png", "tab\there.png"):
        (tmp_path / name).write_bytes(b"x")
    bad = os.fsdecode(b"caf\xe9.png")  # not UTF-8: a Latin-1 name
    (tmp_path / bad).write_bytes(b"x")
    listed = tmp_path / "list.txt"
    listed.write_bytes(b"# a comment\n lead.png\r\n#hash.png\n\ntab\there.png\ncaf\xe9.png\n")
    got = [i.name for i in find_inputs([], str(listed))]
    assert got == [" lead.png", "tab\there.png", bad]  # spaces kept, CRLF ended, the comment skipped
    assert "'#hash.png' is read as a comment" in capsys.readouterr().err  # ... and said
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"#hash.png\0new\nline.png\0 lead.png\0")))
    assert [i.name for i in find_inputs([], "-", null=True)] == ["#hash.png", "new\nline.png", " lead.png"]


@pytest.mark.slow
def test_a_name_that_is_not_utf8_is_printed_to_a_strict_utf8_terminal(tmp_path, images, lm_dir, clip_file):
    """The images after it used to be lost to a UnicodeEncodeError."""
    import shutil
    import subprocess

    bad = os.fsdecode(b"caf\xe9.png")
    shutil.copy(images[0], tmp_path / bad)
    shutil.copy(images[1], tmp_path / "z.png")
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict", PYTHONWARNINGS="ignore")
    run = subprocess.run([sys.executable, "-m", "zerocap", "caption", bad, "z.png", "--lm", lm_dir, "--clip",
                          clip_file, *FAST], cwd=tmp_path, capture_output=True, env=env, timeout=300)
    out = run.stdout.decode()
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    assert "caf\\udce9.png" in out and "z.png" in out and out.count("best mixed:") == 2


@pytest.mark.parametrize("args,message", [
    (["caption", "--list", "{bad_list}"], "image file not found: caf"),
])
def test_a_list_that_is_not_utf8_is_read_as_file_names(tmp_path, capsys, args, message, lm_dir, clip_file):
    (tmp_path / "l.txt").write_bytes(b"caf\xe9.png\n")
    code = main([a.format(bad_list=tmp_path / "l.txt") for a in args] + ["--lm", lm_dir, "--clip", clip_file])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_a_pattern_that_matches_nothing_is_said(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="no file matches 'x/\\*\\*/\\*.png'"):
        find_inputs(["x/**/*.png"])
