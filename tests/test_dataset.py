"""Captioning datasets: inputs, the resumable JSONL output, streaming, and `zerocap caption` over folders."""
import io
import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

from zerocap import InputError
from zerocap.cli import main
from zerocap.jobs.inputs import Input, find_inputs
from zerocap.jobs.results import ResultsFile
from zerocap.jobs.run import run_job

FAST = ["--top-k", "16", "--beam-size", "2", "--max-tokens", "2", "--device", "cpu"]


@pytest.fixture
def folder(tmp_path, images):
    """a/ with 2 images and a sub-folder with 1 more, plus a text file named .jpg and a note."""
    root = tmp_path / "a"
    (root / "sub").mkdir(parents=True)
    shutil.copy(images[0], root / "x0.png")
    shutil.copy(images[1], root / "x1.PNG")
    shutil.copy(images[2], root / "sub" / "x2.png")
    (root / "bad.jpg").write_text("not a picture")
    (root / "notes.txt").write_text("ignored: not an image extension")
    return root


def test_inputs_from_files_folders_patterns_lists_and_urls(folder, tmp_path, monkeypatch):
    listed = tmp_path / "list.txt"
    listed.write_text(f"# a comment\n\n{folder / 'x0.png'}\nhttps://example.com/cat.jpg\n")
    monkeypatch.chdir(tmp_path)
    got = find_inputs(["a", "a/**/*.png", "missing.png"], "list.txt")
    # each real file once, under its first spelling, in order; a folder's files sorted
    assert [i.name for i in got] == ["a/bad.jpg", "a/x0.png", "a/x1.PNG", "a/sub/x2.png", "missing.png",
                                     "https://example.com/cat.jpg"]
    assert got[1].source == str(folder / "x0.png") and got[-1].source == "https://example.com/cat.jpg"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a/x0.png\na/sub/x2.png\n")))
    assert [i.name for i in find_inputs([], "-")] == ["a/x0.png", "a/sub/x2.png"]
    with pytest.raises(InputError, match="no file matches 'b/\\*.png'"):
        find_inputs(["b/*.png"])
    with pytest.raises(InputError, match="cannot read the list nope.txt"):
        find_inputs([], "nope.txt")


def item(name):
    return Input(name, "/data/" + name)


def record(name, error=None):
    base = {"image": name, "source": "/data/" + name}
    return {**base, "error": error} if error else {**base, "best_mixed": f"Image of {name}"}


def test_results_resume_repair_and_retry(tmp_path):
    path = tmp_path / "out.jsonl"
    r = ResultsFile(str(path))
    for rec in (record("a"), record("b", "not an image: b"), record("c")):
        r.write(rec)
    r.close()
    with open(path, "ab") as f:
        f.write(b'{"zerocap": "captions/1", "image": "d", "best_mi')  # a crash mid-line
    r = ResultsFile(str(path))
    assert r.done(item("a")) and r.done(item("c")) and r.failed(item("b")) and item("d") not in r
    r.write(record("d"))
    r.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [x["image"] for x in lines] == ["a", "b", "c", "d"]  # the cut line is gone, d once
    assert all(x["zerocap"] == "captions/1" for x in lines)
    r = ResultsFile(str(path), retry_failed=True)
    assert not r.failed(item("b")) and item("b") not in r
    r.close()
    assert [json.loads(line)["image"] for line in path.read_text().splitlines()] == ["a", "c", "d"]


def test_results_refuse_a_foreign_file_and_a_second_writer(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text(json.dumps({"zerocap": "captions/1", **record("a")}) + "\nhello\n")
    with pytest.raises(InputError, match="line 2 is not a zerocap captions line"):
        ResultsFile(str(path))
    path.write_text("")
    first = ResultsFile(str(path))
    with pytest.raises(InputError, match="being written by another zerocap job"):
        ResultsFile(str(path))
    first.close()


def test_run_job_writes_each_record_when_done_and_emits_them_in_input_order(tmp_path):
    """The backend answers in completion order: the results file gets each line at once (a crash
    loses nothing done), stdout gets them in the order the inputs were given."""
    events = []
    order = [2, 0, 1, 4, 3]  # completion order of the five inputs to run

    def backend(todo):
        events.append(("todo", [i.name for i in todo]))
        for k in order:
            events.append(("done", todo[k].name))
            yield k, record(todo[k].name, "bad" if todo[k].name == "n3" else None)

    results = ResultsFile(str(tmp_path / "o.jsonl"))
    results.write(record("n0"))
    summary = run_job([item(f"n{i}") for i in range(6)], backend, lambda r: events.append(("emit", r["image"])),
                      results)
    assert events == [("todo", ["n1", "n2", "n3", "n4", "n5"]), ("done", "n3"), ("done", "n1"), ("emit", "n1"),
                      ("done", "n2"), ("emit", "n2"), ("emit", "n3"), ("done", "n5"), ("done", "n4"),
                      ("emit", "n4"), ("emit", "n5")]
    results.close()
    written = [json.loads(x)["image"] for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert written == ["n0", "n3", "n1", "n2", "n5", "n4"]  # as each was done
    assert (summary.captioned, summary.failed, summary.skipped) == (4, 1, 1) and summary.failures == ["n3"]


def test_the_local_backend_keeps_a_bounded_number_in_flight_on_every_engine(lm_dir, clip_file, images):
    """Two CPU engines, 2 in flight each: never more than 4 requests submitted and unfinished; both
    engines used; each input's record is its own."""
    from zerocap import ZeroCap, modes
    from zerocap.config import ZeroCapConfig
    from zerocap.jobs.backends import Local
    from zerocap.jobs.inputs import identify

    engines = [ZeroCap.load(lm_dir, clip_file, device="cpu") for _ in range(2)]
    backend = Local(engines, modes.get("caption"), ZeroCapConfig(top_k=16, beam_size=2, max_tokens=2), {},
                    in_flight=2)
    most, pulled = [0], []

    def inputs():
        for i in range(10):
            pulled.append(i)
            most[0] = max(most[0], sum(s.load for s in backend.schedulers))
            yield identify(images[i % 4])

    submitted = []
    for n, scheduler in enumerate(backend.schedulers):
        real = scheduler.submit
        scheduler.submit = lambda request, real=real, n=n: submitted.append(n) or real(request)
    try:
        got = dict(backend(inputs()))
        assert sorted(got) == list(range(10)) and all(got[i]["image"] == images[i % 4] for i in got)
        assert all("beams" in r for r in got.values())
        assert most[0] <= 4  # 2 in flight x 2 engines, whatever the inputs ahead
        assert sorted(set(submitted)) == [0, 1]  # both engines decoded
    finally:
        backend.close()


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_folder_job_writes_every_image_once_and_goes_on_after_a_bad_file(capsys, folder, lm_dir, clip_file):
    out = folder.parent / "captions.jsonl"
    models = ["--lm", lm_dir, "--clip", clip_file]
    code, stdout, err = run_cli(capsys, "caption", folder, *models, *FAST, "--out", out, "--batch-size", "2")
    assert code == 1  # one input failed
    assert err.rstrip().endswith(f"results in {out}")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(x["image"] for x in lines) == sorted(str(folder / n) for n in ("bad.jpg", "x0.png", "x1.PNG",
                                                                                  "sub/x2.png"))
    bad = next(x for x in lines if x["image"].endswith("bad.jpg"))
    assert bad["error"].startswith("not an image:") and set(bad) == {"zerocap", "image", "source", "content", "error", "settings"}
    good = [x for x in lines if "error" not in x]
    assert all(x["best_mixed"].startswith("Image of a") and x["timing"]["tokens"] == 2 for x in good)
    assert stdout == "" and "captioned 3, failed 1;" in err and "not an image" in err
    # the same command again: nothing to do, nothing written twice
    code, _, err = run_cli(capsys, "caption", folder, *models, *FAST, "--out", out)
    assert code == 1 and "captioned 0, failed 0 (+1 earlier, kept), skipped 4 already in" in err
    assert len(out.read_text().splitlines()) == 4
    # --retry-failed runs the bad file again (and it fails again, once)
    (folder / "bad.jpg").write_text("still not a picture")
    code, _, err = run_cli(capsys, "caption", folder, *models, *FAST, "--out", out, "--retry-failed")
    assert code == 1 and "captioned 0, failed 1, skipped 3 already in" in err and len(out.read_text().splitlines()) == 4


def test_json_lines_on_stdout_include_the_failures(capsys, folder, lm_dir, clip_file):
    code, stdout, err = run_cli(capsys, "caption", folder / "x0.png", folder / "bad.jpg", "--lm", lm_dir,
                                "--clip", clip_file, *FAST, "--json")
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert code == 1 and [x["image"] for x in lines] == [str(folder / "x0.png"), str(folder / "bad.jpg")]
    assert "beams" in lines[0] and lines[1]["error"].startswith("not an image")


@pytest.mark.slow
def test_a_job_killed_part_way_resumes_with_every_image_exactly_once(tmp_path, images, lm_dir, clip_file):
    """The issue's acceptance: kill the job, rerun it; every good image once, every bad one an error line."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(10):
        shutil.copy(images[i % 4], folder / f"img{i:02d}.png")
    for i in range(3):
        (folder / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "zerocap", "caption", str(folder), "--lm", lm_dir, "--clip", clip_file, *FAST,
           "--out", str(out), "--batch-size", "1"]
    job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 4):
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    written = out.read_bytes().splitlines()
    assert 4 <= len(written) < 13, "the job was killed part way"
    with open(out, "ab") as f:  # a line of ours cut short
        f.write(b'{"zerocap": "captions/1", "image": "' + str(folder / "img09.png").encode() + b'", "beams": [{"te')
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 1, rerun.stderr  # the broken files failed
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    names = [x["image"] for x in lines]
    assert sorted(names) == sorted(str(p) for p in folder.iterdir()) and len(names) == len(set(names)) == 13
    assert {x["image"] for x in lines if "error" in x} == {str(folder / f"broken{i}.png") for i in range(3)}
    assert f"skipped {len(written)} already in" in rerun.stderr
