"""The pseudo-token method through the command line: its --json record, dataset jobs (--out,
resume, other settings refused), their run.py command lines, clips, eval, and bad input in words."""
import json

import pytest

from zerocap import methods
from zerocap.cli import main

PT = ["--method", "pseudo-tokens", "--sentence-iterations", "2", "--max-tokens", "4", "--beam-size", "2",
      "--device", "cpu"]


@pytest.fixture
def models(lm_dir, clip_file):
    return ["--lm", lm_dir, "--clip", clip_file]


def records(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_the_json_record_holds_every_sentence_in_order_and_the_final_beams(capsys, models, images):
    assert main(["caption", images[0], *PT, "--seed", "3", "--json", *models]) == 0
    (r,) = records(capsys)
    assert r["method"] == "pseudo-tokens" and r["seed"] == 3 and r["settings"]["method"] == "pseudo-tokens"
    assert [set(s) for s in r["sentences"]] == [{"text", "clip_score", "log_prob"}] * 2
    texts = [s["text"] for s in r["sentences"]]
    best = max(range(2), key=lambda i: r["sentences"][i]["clip_score"])
    assert r["best_clip"] == texts[best] and r["best_mixed"] in texts
    assert [set(b) for b in r["beams"]] == [{"text", "caption", "score"}] * 2
    assert all(b["caption"] == "Image of a" + b["text"] for b in r["beams"])
    assert r["timing"]["tokens"] >= 2


def test_a_seed_changes_the_sentences_and_the_same_seed_repeats_them(capsys, models, images):
    runs = []
    for seed in ("1", "1", "2"):
        assert main(["caption", images[1], *PT, "--seed", seed, "--json", *models]) == 0
        runs.append([s["text"] for s in records(capsys)[0]["sentences"]])
    assert runs[0] == runs[1] != runs[2]


def test_their_run_py_command_line_runs_as_it_is(capsys, models, images):
    argv = ["--token_wise", "--randomized_prompt", "--run_type", "caption_images", "--data_path", images[0],
            "--sentence_iterations", "2", "--target_seq_length", "4", "--beam_size", "2", "--scheduler_type", "expo",
            "--num_dummy_tokens", "3", "--json", "--device", "cpu", *models]
    assert main(argv) == 0
    (r,) = records(capsys)
    assert r["method"] == "pseudo-tokens"
    s = methods.in_full(r["settings"])  # (a line records the knobs that differ from the method's defaults)
    assert (s["lr_schedule"], s["dummy_tokens"], s["token_wise"], s["randomized_prompt"]) == ("exponential", 3, True,
                                                                                             True)
    assert "token_wise" not in r["settings"] and r["settings"]["dummy_tokens"] == 3


def test_a_dataset_job_resumes_and_refuses_other_settings(capsys, models, images, tmp_path):
    out = str(tmp_path / "pt.jsonl")
    assert main(["caption", *images[:2], *PT, "--out", out, *models]) == 0
    lines = open(out).read().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["method"] == "pseudo-tokens" for line in lines)
    capsys.readouterr()
    assert main(["caption", *images[:3], *PT, "--out", out, *models]) == 0  # resumes: only the third
    assert "skipped 2 already in" in capsys.readouterr().err
    assert len(open(out).read().splitlines()) == 3
    assert main(["caption", images[3], "--device", "cpu", "--out", out, *models]) == 2  # zerocap's settings
    assert "method" in capsys.readouterr().err


def test_eval_takes_the_methods_records(capsys, models, images, tmp_path):
    import os

    out = str(tmp_path / "pt.jsonl")
    assert main(["caption", images[0], *PT, "--out", out, *models]) == 0
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({"images": [{"id": 1, "file_name": os.path.basename(images[0])}],
                                "annotations": [{"image_id": 1, "caption": "a photo of a thing"}]}))
    capsys.readouterr()
    assert main(["eval", out, "--refs", str(refs), "--field", "best_clip", "--skip", "METEOR,SPICE,CLIP-S",
                 "--tokenizer", "simple", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 1 and report["field"] == "best_clip" and "CIDEr" in report["scores"]


@pytest.mark.parametrize("extra,message", [
    (["--num-iterations", "3"], "num_iterations is a knob of method zerocap, not of pseudo-tokens"),
    (["--compile"], "--compile compiles ZeroCap's decoding step; method pseudo-tokens runs eagerly"),
    (["--preset", "ocr"], "method pseudo-tokens has no presets"),
    (["--lm-dtype", "bfloat16"], "method pseudo-tokens runs the LM in float32"),
    (["--sentence-iterations", "0"], "sentence_iterations must be an integer from 1 to 200, got 0"),
    (["--learning-rate", "0"], "learning_rate must be a number in (0, 10], got 0.0"),
    (["--max-tokens", "101"], "max_tokens must be an integer from 1 to 100, got 101"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, models, images, extra, message):
    assert main(["caption", images[0], *PT, *extra, *models]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_knob_of_this_method_given_to_zerocap_is_refused(capsys, models, images):
    assert main(["caption", images[0], "--sentence-iterations", "3", "--device", "cpu", *models]) == 2
    assert "sentence_iterations is a knob of method pseudo-tokens, not of zerocap" in capsys.readouterr().err
    assert main(["caption", images[0], "--seed", "3", "--max-tokens", "1", "--top-k", "8", "--beam-size", "1",
                 "--num-iterations", "0", "--device", "cpu", "--json", *models]) == 0  # their ZeroCap --seed: no effect


def test_a_clip_by_their_sampling_and_by_frames_asked(capsys, models, tmp_path):
    from test_pseudo_tokens import write_clip

    path, _ = write_clip(tmp_path / "clip.mkv")
    assert main(["video", path, *PT, "--json", *models]) == 0
    (r,) = records(capsys)
    assert r["frames_sampled"] == 9 and r["sampling"].startswith("every 3rd frame") and r["frames"] >= 1
    assert main(["video", path, *PT, "--frames", "4", "--json", *models]) == 0
    (r,) = records(capsys)
    assert r["frames_sampled"] == 4 and r["sampling"] == "4 frames spread evenly"


def test_the_command_line_still_starts_without_torch():
    """Both methods' knobs are parsed from config.py's tables: `zerocap --help` and a mistake in the
    flags are answered before torch is imported."""
    import subprocess
    import sys

    code = "import sys, zerocap.cli; zerocap.cli.build_parser(); sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_lm_model_gpt_neo_is_refused_in_words_never_ignored(lm_dir, clip_file, images, capsys):
    from zerocap.cli import main

    assert main(["caption", images[0], "--method", "pseudo-tokens", "--lm_model", "gpt-neo", "--lm", lm_dir,
                 "--clip", clip_file]) == 2
    assert "--lm_model gpt-neo names a gpt-neo LM, but --lm" in capsys.readouterr().err  # a GPT-2 folder
    assert main(["caption", images[0], "--lm_model", "gpt-neo", "--lm", lm_dir, "--clip", clip_file]) == 2
    assert "--lm_model gpt-neo names a gpt-neo LM, but --lm" in capsys.readouterr().err  # a GPT-2 folder
