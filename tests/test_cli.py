"""The `zerocap` command: outputs, the authors' flag spellings, and every bad input (exit 2)."""
import json
import os
import subprocess
import sys

import pytest

from zerocap.cli import main

FAST = ["--top-k", "16", "--beam-size", "2", "--max-tokens", "2", "--device", "cpu"]


@pytest.fixture
def models(lm_dir, clip_file):
    return ["--lm", lm_dir, "--clip", clip_file]


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def jsonl(out):
    return [json.loads(line) for line in out.splitlines()]


def test_caption_json_one_object_per_image(capsys, models, images):
    code, out, err = run(capsys, "caption", images[0], images[1], *models, *FAST, "--json")
    assert code == 0, err
    results = jsonl(out)
    assert [r["target"] for r in results] == [images[0], images[1]]
    for r in results:
        assert len(r["beams"]) == 2
        scores = [b["score"] for b in r["beams"]]
        assert scores == sorted(scores, reverse=True)  # best first
        for b in r["beams"]:
            assert b["caption"] == "Image of a" + b["text"]
            assert set(b) >= {"text", "caption", "score", "clip_score", "perplexity"}
        assert r["best_mixed"] == r["beams"][0]["caption"]
        assert r["best_clip"] in [b["caption"] for b in r["beams"]]
        assert r["best_fluency"] in [b["caption"] for b in r["beams"]]
        assert r["timing"]["tokens"] == 2 and r["timing"]["seconds"] > 0


def test_text_output(capsys, models, images):
    code, out, _ = run(capsys, "caption", images[0], *models, *FAST)
    assert code == 0
    assert "best mixed:   Image of a" in out and "best CLIP:" in out and "best fluency:" in out


def test_presets_and_flags(capsys, models, images):
    code, out, _ = run(capsys, "caption", images[0], *models, *FAST, "--preset", "ocr", "--json")
    assert code == 0 and jsonl(out)[0]["best_mixed"].startswith("Image of text that says")
    code, out, _ = run(capsys, "caption", images[0], *models, *FAST, "--preset", "knowledge",
                       "--cond-text", "A photo of", "--json")
    assert jsonl(out)[0]["cond_text"] == "A photo of"


def test_seed_flag_spellings_give_the_same_result(capsys, models, images):
    seed_style = ["--reset_context_delta", "--caption_img_path", images[0], "--cond_text", "Image of",
                  "--beam_size", "2", "--target_seq_length", "2", "--end_factor", "1.04", "--fusion_factor", "0.98",
                  "--grad_norm_factor", "0.9", "--num_iterations", "2", "--clip_loss_temperature", "0.02",
                  "--clip_scale", "1", "--ce_scale", "0.3", "--stepsize", "0.25", "--repetition_penalty", "1.2",
                  "--forbidden_factor", "15", "--top_k", "16", "--lm_model", "gpt-2", "--seed", "0"]
    new_style = ["caption", images[0], "--cond-text", "Image of", "--beam-size", "2", "--max-tokens", "2",
                 "--end-factor", "1.04", "--fusion-factor", "0.98", "--grad-norm-factor", "0.9",
                 "--num-iterations", "2", "--clip-temperature", "0.02", "--clip-scale", "1", "--ce-scale", "0.3",
                 "--stepsize", "0.25", "--repetition-penalty", "1.2", "--forbidden-factor", "15", "--top-k", "16"]
    code_a, a, err = run(capsys, *seed_style, *models, "--device", "cpu", "--json")
    assert code_a == 0, err
    code_b, b, _ = run(capsys, *new_style, *models, "--device", "cpu", "--json")
    strip = lambda r: {k: v for k, v in r.items() if k != "timing"}  # noqa: E731
    assert strip(jsonl(a)[0]) == strip(jsonl(b)[0])


def test_seed_arithmetic_spelling(capsys, models, images):
    a = run(capsys, "--run_type", "arithmetics", "--arithmetics_imgs", *images[:3], "--arithmetics_weights",
            "1", "1", "-1", *models, *FAST, "--json")
    b = run(capsys, "arithmetic", *images[:3], "--weights", "1", "1", "-1", *models, *FAST, "--json")
    c = run(capsys, "--run_type=arithmetics", *images[:3], "--weights", "1", "1", "-1", *models, *FAST, "--json")
    assert a[0] == b[0] == c[0] == 0, a[2] + c[2]
    ra, rb, rc = jsonl(a[1])[0], jsonl(b[1])[0], jsonl(c[1])[0]
    assert [x["text"] for x in ra["beams"]] == [x["text"] for x in rb["beams"]] == [x["text"] for x in rc["beams"]]
    assert ra["target"] == f"+1 x {images[0]} +1 x {images[1]} -1 x {images[2]}"


def test_arithmetic_with_texts(capsys, models, images):
    code, out, err = run(capsys, "arithmetic", images[0], "--text", "a crown", "--text-weight", "0.5",
                         *models, *FAST, "--json")
    assert code == 0, err
    assert "+0.5 x text 'a crown'" in jsonl(out)[0]["target"]


def test_default_weights_root_from_environment(capsys, monkeypatch, weights_root, images):
    monkeypatch.setenv("ZEROCAP_WEIGHTS", weights_root)
    monkeypatch.setenv("ZEROCAP_OFFLINE", "1")
    code, out, err = run(capsys, "caption", images[0], *FAST, "--json")
    assert code == 0, err
    assert len(jsonl(out)) == 1


def test_two_cpu_replicas_give_the_same_results(capsys, models, images):
    a = run(capsys, "caption", *images[:3], *models, *FAST, "--json", "--batch-size", "1",
            "--devices", "cpu,cpu")
    b = run(capsys, "caption", *images[:3], *models, *FAST, "--json")
    assert a[0] == b[0] == 0
    texts = lambda out: [[x["text"] for x in r["beams"]] for r in jsonl(out)]  # noqa: E731
    assert texts(a[1]) == texts(b[1])
    assert [r["target"] for r in jsonl(a[1])] == images[:3]  # input order kept


BAD = [
    (["caption", "missing.png"], "image file not found: missing.png"),
    (["caption"], "no images: give image files, folders, patterns or URLs, or --list FILE"),
    (["caption", "missing.png", "gone.png"], "image file not found: missing.png (nor the 1 others)"),
    (["caption", "{img}", "--beam-size", "0"], "beam_size must be an integer from 1 to 100, got 0"),
    (["caption", "{img}", "--end-factor", "nan"], "end_factor must be a finite number"),
    (["caption", "{img}", "--fusion-factor", "2"], "fusion_factor must be a number in [0, 1], got 2.0"),
    (["caption", "{img}", "--beam-size", "20", "--top-k", "10"], "beam_size (20) must not exceed top_k (10)"),
    (["caption", "{img}", "--cond-text", "a " * 80], "cond_text is too long for CLIP"),
    (["caption", "{img}", "--batch-size", "0"], "--batch-size must be an integer from 1 to 64, got 0"),
    (["caption", "{img}", "--device", "tpu"], "unknown device 'tpu'"),
    (["arithmetic", "{img}", "{img2}", "--weights", "1"], "got 2 image(s) but 1 --weights; give one weight per image"),
    (["arithmetic", "{img}", "{img}", "--weights", "1", "-1"], "(nearly) zero"),
    (["arithmetic"], "mode arithmetic needs images and/or texts to combine, with their weights"),
    (["arithmetic", "{img}", "--text-weight", "2"], "--text-weight given without texts"),
]


def test_an_image_that_fails_is_reported_and_the_exit_status_says_so(capsys, models, images, tmp_path):
    notimage = tmp_path / "x.jpg"
    notimage.write_text("not a picture")
    code, out, err = run(capsys, "caption", notimage, images[0], *models, *FAST)
    assert code == 1 and f"zerocap: error: not an image: {notimage}" in err
    assert out.count("best mixed:") == 1 and "captioned 1, failed 1;" in err


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_exits_2_with_a_message(capsys, models, images, tmp_path, args, message):
    notimage = tmp_path / "x.jpg"
    notimage.write_text("not a picture")
    args = [a.format(img=images[0], img2=images[1], notimage=notimage) for a in args]
    code, out, err = run(capsys, *args, *models)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("flags,message", [
    (["--beam-size", "many"], "argument --beam-size/--beam_size: 'many' is not an integer"),
    (["--seed", "1.5", "--method", "pseudo-tokens"], "argument --seed: '1.5' is not an integer"),
    (["--max-tokens", "nan"], "argument --max-tokens/--target_seq_length/--target-seq-length: 'nan' is not an"),
    (["--preset", "poem"], "argument --preset: invalid choice: 'poem'"),
])
def test_argument_errors_are_one_line_and_exit_2(capsys, models, images, flags, message):
    assert main(["caption", images[0], *flags, *models]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("zerocap: error: ") and message in err, err
    assert "(`zerocap caption --help` lists what is allowed)" in err


def test_missing_weights_say_how_to_get_them(capsys, monkeypatch, tmp_path, images):
    monkeypatch.setenv("ZEROCAP_WEIGHTS", str(tmp_path / "empty"))
    monkeypatch.setenv("ZEROCAP_OFFLINE", "1")
    code, _, err = run(capsys, "caption", images[0])
    assert code == 2
    assert "model weights missing" in err and "python script/download-weights" in err
    code, _, err = run(capsys, "caption", images[0], "--lm", str(tmp_path), "--clip", str(tmp_path / "c.pt"))
    assert code == 2 and "language-model weights in" in err and "incomplete" in err


@pytest.mark.slow  # a fresh interpreter per command: seconds of imports each
def test_python_dash_m_and_console_script(images, lm_dir, clip_file):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-m", "zerocap", "caption", "nope.png"], capture_output=True, text=True,
                       env=env, cwd=os.path.dirname(lm_dir))
    assert r.returncode == 2 and r.stderr.strip() == ("zerocap: error: image file not found: nope.png; relative names,"
                                                      " a list's too, are taken from the folder zerocap runs in,"
                                                      f" {os.path.dirname(lm_dir)}")
    r = subprocess.run([sys.executable, "-m", "zerocap", "--caption_img_path", images[0], "--lm", lm_dir,
                        "--clip", clip_file, "--top_k", "8", "--beam_size", "2", "--target_seq_length", "1",
                        "--json"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["beams"]) == 2


def test_exact_flag_gives_the_same_beams_the_authors_way(capsys, models, images, monkeypatch):
    import zerocap.engine

    forms = []
    init = zerocap.engine.ZeroCap.__init__

    def spy(self, *a, **k):
        init(self, *a, **k)
        forms.append(self.form.name)

    monkeypatch.setattr(zerocap.engine.ZeroCap, "__init__", spy)
    a = run(capsys, "caption", images[0], *models, *FAST, "--json", "--exact")
    b = run(capsys, "caption", images[0], *models, *FAST, "--json")
    c = run(capsys, "caption", images[0], *models, *FAST, "--json", "--form", "exact")
    assert a[0] == b[0] == c[0] == 0
    assert forms == ["exact", "fast", "exact"]  # fast unless --exact / --form exact, on a CPU too
    texts = [[x["text"] for x in jsonl(r[1])[0]["beams"]] for r in (a, b, c)]
    assert texts[0] == texts[1] == texts[2]


def test_a_bug_is_not_passed_off_as_a_user_error(capsys, models, images, monkeypatch):
    """Only InputError is the user's mistake (one line, exit 2); anything else keeps its traceback."""
    import zerocap.batch

    def broken(*a, **k):
        raise ValueError("internal: shapes do not match")

    monkeypatch.setattr(zerocap.batch.Batch, "step", broken)  # in the scheduler's thread
    with pytest.raises(ValueError, match="internal: shapes do not match"):
        main(["caption", images[0], *models, *FAST])


@pytest.mark.slow
def test_ctrl_c_while_loading_the_models_exits_130_without_a_traceback(images, lm_dir, clip_file):
    import signal
    import time

    env = dict(os.environ, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "zerocap", "caption", images[0], "--lm", lm_dir, "--clip", clip_file, *FAST]
    interrupted = 0
    for delay in (0.3, 1.0, 2.0, 3.0):  # during the imports, and while torch and the models load
        # a shell starts background jobs with Ctrl-C ignored, which the child would inherit
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
        if "best mixed" in out:  # it finished first: nothing to interrupt
            continue
        interrupted += 1
        assert p.returncode == 130, err
        assert err.strip().endswith("zerocap: interrupted") and "Traceback" not in err, err
    assert interrupted >= 2


def test_gpt_neo_weights_missing_offline_name_their_download_command(capsys, monkeypatch, weights_root, images):
    monkeypatch.setenv("ZEROCAP_WEIGHTS", weights_root)  # has gpt2-medium and CLIP, no GPT-Neo
    monkeypatch.setenv("ZEROCAP_OFFLINE", "1")
    code, _, err = run(capsys, "caption", images[0], "--lm_model", "gpt-neo", *FAST)
    assert code == 2
    assert "gpt-neo-125M" in err and "python script/download-weights --lm gpt-neo-125M" in err


def test_own_lm_without_clip_needs_only_clip_from_the_weights_folder(capsys, monkeypatch, tmp_path, lm_dir,
                                                                     clip_file, images):
    import shutil

    root = tmp_path / "w"
    (root / "clip").mkdir(parents=True)
    shutil.copyfile(clip_file, root / "clip" / "ViT-B-32.pt")  # no gpt2-medium/ here
    monkeypatch.setenv("ZEROCAP_WEIGHTS", str(root))
    monkeypatch.setenv("ZEROCAP_OFFLINE", "1")
    code, out, err = run(capsys, "caption", images[0], "--lm", lm_dir, *FAST, "--json")
    assert code == 0, err
    assert len(jsonl(out)) == 1


@pytest.mark.parametrize("args,message", [
    (["caption", "{img}", "--retry-failed"], "--retry-failed needs --out FILE"),
    (["caption", "{img}", "--mix-settings"], "--mix-settings needs --out FILE"),
    (["caption", "{img}", "--actors", "2"], "--actors needs --ray and a number from 1 up"),
    (["caption", "{img}", "--ray", "--actors", "0"], "--actors needs --ray and a number from 1 up"),
    (["caption", "{img}", "--list", "no-such-list.txt"], "cannot read the list no-such-list.txt"),
    (["caption", "'no/such/*.png'"], "no file matches"),
    (["video", "{img}", "--frames", "0"], "frames must be an integer from 1 to 64, got 0"),
    (["video", "{img}", "--every", "0"], "every must be a number of seconds from 0.001 up, got 0"),
    (["video", "{img}", "--every", "nan"], "every must be a number of seconds from 0.001 up, got nan"),
    (["video", "{img}", "--every", "1e-320"], "every must be a number of seconds from 0.001 up, got 9.99989e-321"),
    (["caption", "{img}", "--out", "{img}"], "is one of the inputs"),
    (["caption", "{img}", "--out", "/no/such/folder/x.jsonl"], "the folder /no/such/folder does not exist"),
])
def test_bad_dataset_flags_exit_2_before_the_models_load(capsys, models, images, args, message, monkeypatch):
    import zerocap.engine

    monkeypatch.setattr(zerocap.engine.ZeroCap, "load", lambda *a, **k: pytest.fail("models loaded"))
    code, out, err = run(capsys, *[a.format(img=images[0]).strip("'") for a in args], *models, *FAST)
    assert code == 2 and message in err and "Traceback" not in err
