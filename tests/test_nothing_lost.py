"""Nothing a user owns is lost, and every job ends in words: a user's text in a results file
survives or the run is refused untouched; lists are bounded; a results file holds one set of
settings unless asked; a job's own results file is never its input; eval counts each real image
once and names every reference problem."""
import io
import json
import os
import shutil
import sys
import tracemalloc

import pytest

from zerocap import InputError, weights
from zerocap.cli import main
from zerocap.jobs.inputs import find_inputs, read_list
from zerocap.jobs.results import ResultsFile

FAST = ["--top-k", "16", "--beam-size", "2", "--max-tokens", "1", "--num-iterations", "1", "--device", "cpu"]


@pytest.fixture
def job(tmp_path, images, lm_dir, clip_file, monkeypatch):
    """A folder in/ with a.png and b.png, run from tmp_path; `run(*args)` -> (exit status, stderr)."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(images[0], folder / "a.png")
    shutil.copy(images[1], folder / "b.png")
    monkeypatch.chdir(tmp_path)

    class Job:
        path = tmp_path
        models = ["--lm", lm_dir, "--clip", clip_file, *FAST]

        def run(self, *args, capsys):
            code = main([str(a) for a in (args[0], *self.models, *args[1:])])  # the test's flags win
            return code, capsys.readouterr().err

    return Job()


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


# ---- a user's text in a results file ---------------------------------------------------------------
USER_TEXTS = {
    "a note without a newline": b"NOTE: checked by hand",
    "a 1.3 MB note without a newline": b"NOTE: " + b"x" * 1_300_000,
    "a note that starts like JSON": b'{"note": "mine"',
    "our mark, then the user's words": b'{"zerocap": "captions/1", "image": "a.png", "ok": "caf\xc3\xa9',
    "a note with a newline": b"NOTE: checked by hand\n",
}


@pytest.mark.parametrize("name", list(USER_TEXTS))
def test_a_users_text_at_the_end_of_a_results_file_refuses_the_run_untouched(job, capsys, name):
    out = job.path / "r.jsonl"
    assert job.run("caption", "in/a.png", "--out", out, capsys=capsys)[0] == 0
    with open(out, "ab") as f:
        f.write(USER_TEXTS[name])
    before = out.read_bytes()
    code, err = job.run("caption", "in/b.png", "--out", out, capsys=capsys)
    assert code == 2 and "is not a zerocap captions file" in err and "choose another file" in err
    assert err.count("\n") == 1 and out.read_bytes() == before  # one line; not a byte changed


@pytest.mark.parametrize("where", ["first", "middle"])
def test_a_users_line_anywhere_refuses_the_run_untouched(tmp_path, where):
    out = tmp_path / "r.jsonl"
    ours = json.dumps({"zerocap": "captions/1", "image": "a.png", "source": "/a.png"}) + "\n"
    out.write_text("my own line\n" + ours if where == "first" else ours + "my own line\n" + ours)
    before = out.read_bytes()
    with pytest.raises(InputError, match="is not a zerocap captions line"):
        ResultsFile(str(out))
    assert out.read_bytes() == before


@pytest.mark.parametrize("text", [b"{", b'{"zero', b'{"zerocap"', b'{"zerocap": "captions/1"'])
def test_a_file_holding_a_start_of_json_is_not_taken_over(tmp_path, text):
    out = tmp_path / "r.jsonl"
    out.write_bytes(text)
    with pytest.raises(InputError, match="not a zerocap captions file"):
        ResultsFile(str(out))
    assert out.read_bytes() == text


def test_only_our_own_half_written_line_is_cut_and_a_whole_line_without_newline_is_kept(tmp_path):
    out = tmp_path / "r.jsonl"
    whole = json.dumps({"zerocap": "captions/1", "image": "a.png", "source": "/a.png", "best_mixed": "x"})
    out.write_text(whole + "\n" + whole.replace("a.png", "b.png")[:40])  # b's line cut by a crash
    r = ResultsFile(str(out))
    assert out.read_text() == whole + "\n"  # only the cut line went
    r.close()
    out.write_text(whole)  # complete, but its newline never came: a record, kept
    r = ResultsFile(str(out))
    assert r.done(type("I", (), {"source": "/a.png", "inode": None})())
    r.write({"image": "c.png", "source": "/c.png"})
    r.close()
    assert [x["image"] for x in lines(out)] == ["a.png", "c.png"] and out.read_text().startswith(whole + "\n")


# ---- lists: bounded, in words ------------------------------------------------------------------------
@pytest.mark.parametrize("source,null", [("/dev/zero", False), ("/dev/zero", True), ("/dev/urandom", False),
                                         ("/dev/urandom", True), ("stdin:/dev/zero", False)])
def test_an_endless_list_ends_in_one_line_in_bounded_memory(tmp_path, monkeypatch, capsys, source, null,
                                                            lm_dir, clip_file):
    args = ["caption", "--list", source, "--lm", lm_dir, "--clip", clip_file] + (["--null"] if null else [])
    if source.startswith("stdin:"):
        stream = open(source[6:], "rb")
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stream))
        args[2] = "-"
    tracemalloc.start()
    try:
        code = main(args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("zerocap: error: ")
    assert any(what in err for what in ("a NUL byte", "longer than", "holds more than")), err
    assert peak < 600e6, f"{peak / 1e6:.0f} MB"  # the list's bound (100 MB) and its names, not gigabytes


def test_list_bounds_are_said(tmp_path):
    listed = tmp_path / "l.txt"
    listed.write_bytes(b"a.png\n" + b"x" * 5000 + b"\n")
    with pytest.raises(InputError, match="has a name longer than 4,096 bytes \\(line 2\\)"):
        read_list(str(listed))
    listed.write_bytes(b"a.png\n" * 1_000_001)
    with pytest.raises(InputError, match="holds more than 1,000,000 names"):
        read_list(str(listed))


def test_a_list_names_files_not_patterns(job, capsys):
    star = job.path / "in" / "photo[1].png"
    shutil.copy(job.path / "in" / "a.png", star)
    listed = job.path / "l.txt"
    listed.write_text("in/photo[1].png\nin/missing[2].png\nin/*.png\n")
    got = [i.name for i in find_inputs([], str(listed))]
    assert got == ["in/photo[1].png", "in/missing[2].png", "in/*.png"]  # each as named
    code, err = job.run("caption", "--list", listed, capsys=capsys)
    assert code == 1 and "image file not found: in/missing[2].png" in err and "captioned 1, failed 2" in err


# ---- one results file, one set of settings ------------------------------------------------------------
def test_a_results_file_refuses_other_settings_and_names_them(job, capsys):
    out = job.path / "r.jsonl"
    assert job.run("caption", "in", "--out", out, capsys=capsys)[0] == 0
    before = out.read_bytes()
    settings = lines(out)[0]["settings"]
    assert settings["mode"] == "caption" and settings["form"] == "fast" and settings["beam_size"] == 2
    assert len(settings["lm"]) == 16 and len(settings["clip"]) == 16  # the models' fingerprints
    assert settings["lm_model"] == "gpt2 gpt2-medium" and settings["clip_model"] == "ViT-B-32.pt"  # and names
    shutil.copy(job.path / "in" / "a.png", job.path / "new.png")
    for args, named in [(["ocr"], 'mode "caption" (now "ocr"), cond_text "Image of a" (now'),
                        (["caption", "--cond-text", "A photo of"], 'cond_text "Image of a" (now "A photo of")'),
                        (["caption", "--exact"], 'form "fast" (now "exact")')]:
        code, err = job.run(*args, "in/a.png", "new.png", "--out", out, capsys=capsys)
        assert code == 2 and "holds results made with other settings" in err and named in err, err
        assert "--mix-settings" in err and err.count("\n") == 1 and out.read_bytes() == before
    code, err = job.run("caption", "in", "new.png", "--beam-size", "1", "--out", out, capsys=capsys)
    assert code == 2 and "beam_size 2 (now 1)" in err
    # asked for explicitly: appended, each line with its own settings; what is done is still skipped
    code, err = job.run("ocr", "in/a.png", "new.png", "--out", out, "--mix-settings", capsys=capsys)
    assert code == 0 and "captioned 1" in err and "skipped 1" in err
    got = lines(out)
    assert [x["settings"]["mode"] for x in got] == ["caption", "caption", "ocr"]
    code, err = job.run("caption", "in", "--out", out, capsys=capsys)  # a mixed file: mixing is asked again
    assert code == 2 and 'mode "ocr" (now "caption")' in err


def test_a_file_written_before_the_models_were_named_resumes(job, capsys):
    """Lines of an earlier zerocap, whose settings lack lm_model and clip_model: the same models by
    their fingerprints, so the file resumes; another knob is still refused."""
    import json

    out = job.path / "r.jsonl"
    assert job.run("caption", "in/a.png", "--out", out, capsys=capsys)[0] == 0
    records = lines(out)
    for r in records:
        del r["settings"]["lm_model"], r["settings"]["clip_model"]
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    shutil.copy(job.path / "in" / "a.png", job.path / "new.png")
    code, err = job.run("caption", "in/a.png", "new.png", "--out", out, capsys=capsys)
    assert code == 0 and "captioned 1" in err and "skipped 1" in err, err
    code, err = job.run("caption", "in/a.png", "--beam-size", "1", "--out", out, capsys=capsys)
    assert code == 2 and "beam_size 2 (now 1)" in err


def test_a_line_records_the_knobs_that_differ_and_a_knob_added_later_leaves_the_file_resumable(job, capsys):
    """Settings survive a new knob (issue 41): a line records only the knobs that differ from the
    method's defaults, with the defaults' version; a line of an earlier zerocap that recorded every
    knob of its day, one knob short of today's (as if that knob were added since), resumes; a line
    of other defaults is refused, named."""
    import json

    from zerocap import methods

    out = job.path / "r.jsonl"
    assert job.run("caption", "in/a.png", "--out", out, capsys=capsys)[0] == 0
    (record,) = lines(out)
    settings, defaults = record["settings"], methods.ZEROCAP.defaults
    knobs = {k for k in settings if k in methods.ZEROCAP.knobs}
    assert knobs and knobs == {k for k in knobs if settings[k] != getattr(defaults, k)}  # only what differs
    assert "stepsize" not in settings and settings["defaults"] == methods.ZEROCAP.defaults_version
    shutil.copy(job.path / "in" / "a.png", job.path / "new.png")

    def rewrite(change):
        r = json.loads(json.dumps(record))
        change(r["settings"])
        out.write_text(json.dumps(r) + "\n")

    def earlier(s):  # every knob of its day, no defaults version, and no stepsize yet
        s.update({k: getattr(defaults, k) for k in methods.ZEROCAP.knobs if k not in s})
        del s["defaults"], s["stepsize"]

    rewrite(earlier)
    code, err = job.run("caption", "in/a.png", "new.png", "--out", out, capsys=capsys)
    assert code == 0 and "captioned 1" in err and "skipped 1" in err, err
    rewrite(lambda s: s.update(defaults=0))
    code, err = job.run("caption", "in/a.png", "new.png", "--out", out, capsys=capsys)
    assert code == 2 and "defaults 0 (now 1)" in err, err


def test_the_command_that_made_a_file_resumes_it_from_any_folder_without_loading_the_models(job, capsys,
                                                                                           monkeypatch):
    out = job.path / "r.jsonl"
    assert job.run("caption", "in", "--out", out, capsys=capsys)[0] == 0
    from zerocap import engine

    monkeypatch.setattr(engine.ZeroCap, "load", classmethod(lambda *a, **k: pytest.fail("the models were loaded")))
    monkeypatch.chdir(job.path / "in")
    code, err = job.run("caption", ".", "--out", "../r.jsonl", capsys=capsys)
    assert code == 0 and "captioned 0, failed 0, skipped 2 already in ../r.jsonl" in err
    assert len(lines(out)) == 2


def test_lines_from_an_earlier_zerocap_without_settings_are_said(job, capsys):
    out = job.path / "r.jsonl"
    out.write_text(json.dumps({"zerocap": "captions/1", "image": "in/a.png", "source": str(job.path / "in/a.png"),
                               "best_mixed": "x"}) + "\n")
    code, err = job.run("caption", "in", "--out", out, capsys=capsys)
    assert code == 2 and "has no recorded settings: an earlier zerocap wrote it" in err
    code, err = job.run("caption", "in", "--out", out, "--mix-settings", capsys=capsys)
    assert code == 0 and "captioned 1" in err and "skipped 1" in err


# ---- the job's own results file is never its input ------------------------------------------------------
def test_a_glob_that_matches_the_results_file_leaves_it_out(job, capsys, monkeypatch):
    monkeypatch.chdir(job.path / "in")
    code, err = job.run("caption", "*", "--out", "res.jsonl", capsys=capsys)
    assert code == 0 and "captioned 2" in err
    code, err = job.run("caption", "*", "--out", "res.jsonl", capsys=capsys)  # the same command again
    assert code == 0 and "res.jsonl is this job's results file (--out): left out" in err and "skipped 2" in err
    code, err = job.run("caption", "*", "res.jsonl", "--out", "res.jsonl", capsys=capsys)  # named: refused
    assert code == 2 and "is one of the inputs" in err


def test_a_fifo_is_an_error_line_whether_a_glob_or_a_folder_scan_finds_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "d" / "pipe.png")
    os.symlink("nowhere.png", tmp_path / "d" / "broken.png")
    by_glob = [i.name for i in find_inputs(["d/*.png"])]
    by_folder = [i.name for i in find_inputs(["d"])]
    assert by_glob == by_folder == ["d/broken.png", "d/pipe.png"]


# ---- --retry-failed and hard links -------------------------------------------------------------------
def test_retry_failed_says_that_hard_links_keep_the_old_file(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    r = ResultsFile(str(out))
    r.write({"image": "a", "source": "/a", "best_mixed": "x"})
    r.write({"image": "b", "source": "/b", "error": "not an image: b"})
    r.close()
    os.link(out, tmp_path / "backup.jsonl")
    notes = []
    r = ResultsFile(str(out), retry_failed=True, warn=notes.append)
    r.close()
    assert notes == [f"--retry-failed wrote {out} anew without its error lines; its 1 other hard link still names"
                     " the old file"]
    assert len(lines(out)) == 1 and len(lines(tmp_path / "backup.jsonl")) == 2


# ---- weights -------------------------------------------------------------------------------------
def test_a_failed_download_leaves_no_empty_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("ZEROCAP_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    (tmp_path / "w").mkdir()
    with pytest.raises(InputError, match="the download failed"):
        weights.ensure(str(tmp_path / "w"))
    assert os.listdir(tmp_path / "w") == []  # no gpt2-medium/ left behind; the folder that was there stays
    with pytest.raises(InputError):
        weights.ensure(str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def test_the_library_loads_quietly_unless_asked(lm_dir, clip_file, capfd):
    from zerocap import ZeroCap

    capfd.readouterr()
    ZeroCap.load(lm_dir, clip_file, device="cpu")
    out, err = capfd.readouterr()
    assert out == "" and "Loading weights" not in err and "loss_type" not in err, err


# ---- third round: links, signals ---------------------------------------------------------------------
@pytest.mark.parametrize("option", ["--out", "--per-image"])
def test_a_link_to_a_file_not_there_yet_is_kept_when_the_run_fails_before_its_first_line(job, capsys, option):
    """--out (or eval's --per-image) a symlink to a file that does not exist yet: a run that fails
    before writing removes the empty file it created where the link points, never the link."""
    (job.path / "target").mkdir()
    link = job.path / "out.jsonl"
    os.symlink(job.path / "target" / "made.jsonl", link)
    if option == "--out":
        (job.path / "bad.pt").write_bytes(b"not a checkpoint")  # found, so the run starts: it fails loading
        code, err = job.run("caption", "in/a.png", "--out", link, "--clip", job.path / "bad.pt", capsys=capsys)
    else:
        assert job.run("caption", "in/a.png", "--out", "r.jsonl", capsys=capsys)[0] == 0
        code = main(["eval", "r.jsonl", "--refs", str(job.path / "missing.json"), "--per-image", str(link)])
        err = capsys.readouterr().err
    assert code == 2, err
    assert os.path.islink(link) and os.readlink(link) == str(job.path / "target" / "made.jsonl")
    assert not (job.path / "target" / "made.jsonl").exists()  # the empty file it made is gone, the link stays


def test_sigterm_before_the_first_line_leaves_no_empty_file(tmp_path, lm_dir, clip_file, images):
    """SIGTERM (kill, docker stop) cleans up as Ctrl-C does, and exits 143 with one line."""
    import signal
    import subprocess
    import time

    out = tmp_path / "r.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "zerocap", "caption", images[0], "--lm", lm_dir, "--clip",
                             clip_file, *FAST, "--out", str(out)], stderr=subprocess.PIPE, text=True)
    for _ in range(600):  # the results file is opened (and checked) before the models load
        if out.exists():
            break
        time.sleep(0.05)
    assert out.exists()
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "zerocap: terminated"
    assert not out.exists()


def test_new_content_at_a_recorded_name_and_a_new_link_are_captioned_not_skipped(job, capsys, images):
    """x.png given new content, z.png added and y.png replaced by a link to z.png: both x.png's new
    content and z.png are captioned (never a silent skip of content never captioned), with a note."""
    chg = job.path / "chg"
    chg.mkdir()
    shutil.copy(images[0], chg / "x.png")
    shutil.copy(images[1], chg / "y.png")
    assert job.run("caption", chg, "--out", "chg.jsonl", capsys=capsys)[0] == 0
    shutil.copy(images[2], chg / "x.png")
    shutil.copy(images[3], chg / "z.png")
    os.remove(chg / "y.png")
    os.symlink(chg / "z.png", chg / "y.png")
    code, err = job.run("caption", chg / "x.png", chg / "z.png", "--out", "chg.jsonl", capsys=capsys)
    assert code == 0, err
    assert "captioned 2, failed 0;" in err and "skipped" not in err, err
    assert "x.png holds other content than when it was captioned" in err
    records = lines(job.path / "chg.jsonl")
    assert [os.path.basename(r["source"]) for r in records] == ["x.png", "y.png", "x.png", "z.png"]
    assert all(r["content"].count(":") == 2 for r in records)
    # and the same command again: all done now
    code, err = job.run("caption", chg / "x.png", chg / "z.png", "--out", "chg.jsonl", capsys=capsys)
    assert code == 0 and "captioned 0, failed 0, skipped 2 already" in err, err


def test_a_moved_folder_is_not_captioned_again(job, capsys):
    """The records name their files' content: `mv in moved` and the same job over moved/ is done."""
    assert job.run("caption", "in", "--out", "r.jsonl", capsys=capsys)[0] == 0
    os.rename(job.path / "in", job.path / "moved")
    code, err = job.run("caption", "moved", "--out", "r.jsonl", capsys=capsys)
    assert code == 0 and "captioned 0, failed 0, skipped 2 already" in err, err
    assert len(lines(job.path / "r.jsonl")) == 2


@pytest.mark.parametrize("cut", [1, 10, 20, 36])
def test_our_line_cut_inside_its_start_is_repaired_not_refused(tmp_path, cut):
    """A full disk that cut the first line of ours anywhere, even inside '{"zerocap": "captions/1",
    "image": "': the next run removes the cut bytes and goes on (the promised resume)."""
    out = tmp_path / "r.jsonl"
    r = ResultsFile(str(out))
    r.write({"image": "a", "source": "/a", "best_mixed": "x"})
    r.close()
    whole = out.read_bytes()
    with open(out, "ab") as f:
        f.write(whole[:cut])
    r = ResultsFile(str(out))
    r.close()
    assert out.read_bytes() == whole


def _two_lines(out):
    r = ResultsFile(str(out))
    r.write({"image": "a", "source": "/a", "best_mixed": "x"})
    r.write({"image": "b", "source": "/b", "error": "not an image: b"})
    r.close()


def test_retry_failed_on_a_name_near_the_limit_and_a_file_that_cannot_be_replaced(tmp_path, monkeypatch):
    long = tmp_path / ("r" * 234 + ".jsonl")  # 240 bytes: the old copy's name (~262) was too long
    _two_lines(long)
    ResultsFile(str(long), retry_failed=True).close()
    assert len(lines(long)) == 1
    out = tmp_path / "mounted.jsonl"
    _two_lines(out)
    before = out.read_bytes()

    def busy(src, dst):  # what a bind-mounted file (docker -v host/res.jsonl:/x.jsonl) answers
        raise OSError(16, "Device or resource busy")

    monkeypatch.setattr(os, "replace", busy)
    with pytest.raises(InputError, match="cannot be replaced.*the file is unchanged; mount its folder instead"):
        ResultsFile(str(out), retry_failed=True)
    assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == sorted([long.name, out.name])


def test_a_copy_a_killed_retry_failed_left_is_removed_and_said(tmp_path):
    out = tmp_path / "r.jsonl"
    _two_lines(out)
    for name in (".zerocap-abc123.tmp", ".r.jsonl.x1y2.zerocap-tmp"):  # today's name, an earlier zerocap's
        (tmp_path / name).write_bytes(out.read_bytes()[:30])
    (tmp_path / ".zerocap-mine.tmp").write_bytes(b"my own notes")  # not ours: kept
    notes = []
    ResultsFile(str(out), warn=notes.append).close()
    assert sorted(os.listdir(tmp_path)) == [".zerocap-mine.tmp", "r.jsonl"]
    assert len(notes) == 2 and all("the partial copy a killed --retry-failed left" in n for n in notes), notes
    (tmp_path / ".zerocap-new.tmp").write_bytes(b"")  # another job's copy, made, not yet locked
    (tmp_path / ".zerocap-old.tmp").write_bytes(b"")  # a job killed right after making it
    os.utime(tmp_path / ".zerocap-old.tmp", (1, 1))
    ResultsFile(str(out)).close()
    assert sorted(os.listdir(tmp_path)) == [".zerocap-mine.tmp", ".zerocap-new.tmp", "r.jsonl"]


def test_json_to_the_out_file_itself_is_refused(job, capsys):
    """`--json --out /dev/stdout >> FILE`: two handles would append every line to one file."""
    import subprocess

    out = job.path / "r.jsonl"
    assert job.run("caption", "in/a.png", "--out", out, capsys=capsys)[0] == 0
    before = out.read_bytes()
    with open(out, "ab") as f:
        proc = subprocess.run([sys.executable, "-m", "zerocap", "caption", "in/b.png", *job.models, "--json",
                               "--out", "/dev/stdout"], stdout=f, stderr=subprocess.PIPE, text=True, cwd=job.path)
    assert proc.returncode == 2 and "which is the --out file /dev/stdout itself" in proc.stderr, proc.stderr
    assert out.read_bytes() == before


def test_a_list_from_a_pipe_cut_inside_an_entry_is_refused(job, capsys, monkeypatch):
    """The writer died mid-entry: `imgs` (of imgs/c.png) must not be taken as a folder."""
    r, w = os.pipe()
    os.write(w, b"in/a.png\nin")
    os.close(w)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(os.fdopen(r, "rb")))
    code, err = job.run("caption", "--list", "-", capsys=capsys)
    assert code == 2 and "ends in the middle of entry 2 (no line end after it)" in err, err
    listed = job.path / "l.txt"  # a list file may leave its last line open
    listed.write_bytes(b"in/a.png\nin/b.png")
    assert read_list(str(listed)) == ["in/a.png", "in/b.png"]


def test_relative_names_say_where_they_were_looked_for_and_outs_in_a_file_are_said(job, capsys):
    listed = job.path / "l.txt"
    listed.write_text("d/a.png\n")
    code, err = job.run("caption", "--list", listed, capsys=capsys)
    assert code == 2 and f"relative names, a list's too, are taken from the folder zerocap runs in, {job.path}" in err
    code, err = job.run("caption", "in/a.png", "--out", "in/a.png/x.jsonl", capsys=capsys)
    assert code == 2 and "in/a.png is a file, not a folder" in err, err
    code, err = job.run("caption", "in/a.png", "--out", "res.jsonl/", capsys=capsys)
    assert code == 2 and "--out res.jsonl/ is a folder; give a file name" in err, err


def test_a_settings_difference_names_the_method_and_mode_first(job, capsys):
    assert job.run("caption", "in/a.png", "--out", "r.jsonl", capsys=capsys)[0] == 0
    code, err = job.run("ocr", "in/b.png", "--out", "r.jsonl", "--beam-size", "3", capsys=capsys)
    assert code == 2 and "was made with mode \"caption\" (now \"ocr\")," in err, err


def test_a_preset_that_is_a_mode_is_that_mode_recorded_and_resumed_alike(job, capsys):
    """`caption X --preset ocr` is `ocr X`: a job started one way resumes the other way."""
    assert job.run("caption", "in/a.png", "--preset", "ocr", "--out", "r.jsonl", capsys=capsys)[0] == 0
    assert lines(job.path / "r.jsonl")[0]["settings"]["mode"] == "ocr"
    code, err = job.run("ocr", "in/a.png", "in/b.png", "--out", "r.jsonl", capsys=capsys)
    assert code == 0 and "captioned 1, failed 0, skipped 1 already" in err, err


def test_a_results_file_without_newlines_is_refused_in_bounded_memory(tmp_path):
    """A sparse 20 GB --out (NUL bytes, no newline) is refused in one line, read in pieces: not a
    MemoryError after gigabytes."""
    import tracemalloc

    out = tmp_path / "r.jsonl"
    with open(out, "wb") as f:
        f.truncate(20 * 10**9)
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="line 1 is longer than 16,000,000 bytes"):
            ResultsFile(str(out))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100e6, f"{peak / 1e6:.0f} MB"
    assert os.path.getsize(out) == 20 * 10**9  # untouched
