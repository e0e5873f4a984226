"""MAGIC search (zerocap/magic/, issue 42): the exact form against the paper's step as the tests
write it (reference_magic.py), with a Hugging Face CLIP (their CLIP wrapper's kind) and with
OpenAI CLIP; the fast form against the exact one over a seeded sweep of its knobs, requests of
other settings sharing steps; beside the other methods in the scheduler; the command line, dataset
jobs and bad input in words.

Captions are compared exactly: the reference and the forms compute the same scores in other
orders (the reference without a key/value cache, each candidate's whole row; the fast form with
CLIP's prefix keys/values), so a near-tie could in principle flip a choice; the seeded cases are
not near ties, and the per-token probabilities are compared to SCORE_REL (tests/numeric.py)."""
import json
import random

import pytest
import torch

from numeric import RERUN, SCORE_REL
from reference_magic import ReferenceMagic, hf_clip_text, openai_clip_text
from zerocap import MagicConfig, ZeroCap, methods
from zerocap.cli import main
from zerocap.decoding import decode
from zerocap.modes import Target


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory):
    from tiny_models import write_tiny_hf_clip

    return write_tiny_hf_clip(str(tmp_path_factory.mktemp("magic") / "hf-clip"), "clip")


_ENGINES: dict = {}


def engine_with(lm_dir, clip, form):
    if (clip, form) not in _ENGINES:
        _ENGINES[(clip, form)] = ZeroCap.load(lm_dir, clip, device="cpu", form=form)
    return _ENGINES[(clip, form)]


def reference(engine, cfg: MagicConfig) -> ReferenceMagic:
    """The paper's step on the engine's models: GPT-2 starts from its BOS (<|endoftext|>), which is
    also its end-of-text token; CLIP's text features from the model itself, not the scorer."""
    clip, tok = engine.scorer.clip, engine.tokenizer
    if hasattr(clip, "get_text_features"):
        features = hf_clip_text(clip, engine.scorer.tokenizer)
    else:
        features = openai_clip_text(clip)
    prompt = tok.encode(cfg.cond_text, add_special_tokens=False)
    return ReferenceMagic(engine.lm, tok, features, float(clip.logit_scale.exp()), tok.bos_token_id, tok.eos_token_id,
                          k=cfg.k, alpha=cfg.alpha, beta=cfg.beta, decoding_len=1 + len(prompt) + cfg.max_tokens,
                          clip_text_max_len=cfg.clip_text_max_len), prompt


def papers_caption(engine, cfg, target) -> str:
    ref, prompt = reference(engine, cfg)
    return ref.run(target, prompt)


CASES = [
    MagicConfig(max_tokens=6),  # theirs: k 45, alpha 0.1, beta 2
    MagicConfig(k=8, alpha=0.6, beta=0.5, max_tokens=5, clip_text_max_len=2),
    MagicConfig(k=20, alpha=0.3, beta=4.0, max_tokens=4, cond_text="A photo of"),
]


@pytest.mark.parametrize("clip", ["hugging-face", "openai"])
def test_the_exact_form_gives_the_papers_step(lm_dir, clip_file, hf_clip_dir, images, clip):
    engine = engine_with(lm_dir, hf_clip_dir if clip == "hugging-face" else clip_file, "exact")
    captions = []
    for i, cfg in enumerate(CASES):
        image = images[i % 3]
        target = engine.targets.image_target(image)
        r = engine.caption([image], method="magic", config=cfg)[0]
        assert r.caption == papers_caption(engine, cfg, target), cfg
        assert r.method == "magic" and r.tokens == len(r.step_tokens) <= cfg.max_tokens
        assert r.caption.startswith(cfg.cond_text) and all(0 < c <= 1 for c in r.step_clip_scores)
        captions.append(r.caption)
    # CLIP steers: the first case on two other images gives two other captions
    other = engine.caption([images[3]], method="magic", config=CASES[0])[0].caption
    assert other != captions[0] and other == papers_caption(engine, CASES[0], engine.targets.image_target(images[3]))


def test_an_arithmetic_target_is_steered_as_the_papers_step_steers_it(engine, images):
    """Mode arithmetic: MAGIC scores the weighted sum of the terms' embeddings (ZeroCap's target)."""
    from zerocap.modes import Term

    cfg = MagicConfig(k=16, max_tokens=4)
    r = engine.arithmetic(images=images[:2], weights=[1, -1], texts=["a red car"], method="magic", config=cfg)
    target = engine.targets.combine([Term(1, image=images[0]), Term(-1, image=images[1]), Term(1, text="a red car")])
    assert r.caption == papers_caption(engine, cfg, target) and r.method == "magic"
    assert r.caption != engine.caption([images[0]], method="magic", config=cfg)[0].caption  # the terms count


def sweep(n: int, seed: int) -> list[MagicConfig]:
    rng = random.Random(seed)
    return [MagicConfig(k=rng.randint(1, 60), alpha=rng.choice([0.0, 0.1, rng.random()]), beta=rng.choice([0.0, 2.0,
                        rng.uniform(0, 6)]), max_tokens=rng.randint(1, 7), clip_text_max_len=rng.choice([1, 2, 3, 60]),
                        cond_text=rng.choice(["", "", "Image of a", "A dog's"])) for _ in range(n)]


@RERUN
@pytest.mark.parametrize("clip", ["openai", "hugging-face"])
def test_the_fast_form_gives_the_exact_forms_captions_over_a_seeded_sweep(lm_dir, clip_file, hf_clip_dir, images,
                                                                         clip):
    """Requests of every setting in one batch (one LM pass per cache length, one CLIP pass a step:
    OpenAI CLIP reads each row's text once and the candidates' own tokens after it) give what the
    exact form gives each alone."""
    path = hf_clip_dir if clip == "hugging-face" else clip_file
    fast, exact = engine_with(lm_dir, path, "fast"), engine_with(lm_dir, path, "exact")
    cases = sweep(6, seed=42 if clip == "openai" else 7)
    targets = [Target(fast.targets.image_target(images[i % 4]), f"img{i % 4}") for i in range(len(cases))]
    requests = [fast.request(t, fast.check(cfg)) for t, cfg in zip(targets, cases)]
    batch = requests[0].new_batch(fast)
    decode(requests, batch)
    assert max(n for r in requests for n in r.shared) > 1  # they shared steps
    for r, t, cfg in zip(requests, targets, cases):
        got = batch.result(r)
        want = exact.decoder("magic").decode([t], cfg)[0]
        assert (got.caption, got.step_tokens) == (want.caption, want.step_tokens), cfg
        torch.testing.assert_close(torch.tensor(got.step_lm_probs), torch.tensor(want.step_lm_probs), rtol=SCORE_REL,
                                   atol=1e-7)


def test_the_candidates_kept_always_hold_the_winner_whatever_the_penalties():
    """The bound itself: over seeded scores and penalties anywhere in [-1, 1] -- the extremes
    included (the best base's candidate at +1, another at -1) -- the winner of base - alpha * penalty
    is always among the kept, and a candidate more than 2 alpha below the best base is not kept."""
    from zerocap.magic.decoder import Magic

    g = torch.Generator().manual_seed(3)
    for trial in range(400):
        k = int(torch.randint(1, 50, (1,), generator=g))
        alpha = [0.0, 0.01, 0.1, 0.5, 1.0][trial % 5]
        base = torch.rand(k, generator=g) * float(torch.rand(1, generator=g)) * 3
        penalty = torch.rand(k, generator=g) * 2 - 1
        if trial % 2:  # the adversary: the best base penalised most, every other one least
            penalty = torch.where(base == base.max(), 1.0, -1.0)
        keep = Magic.contenders(base, alpha)
        winner = int((base - alpha * penalty).argmax())
        assert winner in keep.tolist(), (trial, alpha)
        assert all(base[i] >= base.max() - 2 * alpha - 1e-4 for i in keep.tolist())
    assert Magic.contenders(torch.tensor([1.0, 0.79, 0.81, 0.5]), 0.1).tolist() == [0, 2]


@pytest.mark.parametrize("clip", ["openai", "hugging-face"])
def test_the_fast_form_skips_the_hidden_states_of_candidates_that_cannot_win(lm_dir, clip_file, hf_clip_dir, images,
                                                                            clip, monkeypatch):
    """A candidate whose score before the penalty is more than 2 alpha below the best one's cannot
    win (the penalty, a maximum of cosines, lies in [-1, 1]): the fast form runs the LM only on the
    others, and its captions, kept tokens and their penalties are the exact form's, which runs
    every candidate. (With the tiny models' flat scores it prunes at small alpha and large beta.)"""
    path = hf_clip_dir if clip == "hugging-face" else clip_file
    fast, exact = engine_with(lm_dir, path, "fast"), engine_with(lm_dir, path, "exact")
    rows = []
    method = fast.decoder("magic")
    run = method.candidates
    monkeypatch.setattr(method, "candidates", lambda past, top: rows.append(len(top)) or run(past, top))
    cases = [MagicConfig(k=30, alpha=0.01, beta=20.0, max_tokens=6), MagicConfig(k=45, alpha=0.0, max_tokens=5),
             MagicConfig(k=20, alpha=0.02, beta=10.0, max_tokens=6, cond_text="Image of a")]
    for i, cfg in enumerate(cases):
        rows.clear()
        target = Target(fast.targets.image_target(images[i]), f"img{i}")
        got = method.decode([target], cfg)[0]
        want = exact.decoder("magic").decode([target], cfg)[0]
        assert (got.caption, got.step_tokens) == (want.caption, want.step_tokens), cfg
        torch.testing.assert_close(torch.tensor(got.step_penalties), torch.tensor(want.step_penalties), rtol=SCORE_REL,
                                   atol=1e-6)
        assert sum(rows) < cfg.k * len(got.step_tokens), (cfg, rows)  # some candidates were never run


def test_candidates_past_the_rows_of_one_pass_run_in_several_and_give_the_same_captions(engine, images, monkeypatch):
    """At most CANDIDATE_ROWS candidates (each with a copy of its row's keys/values) in one LM pass:
    more run in several, a request's candidates split across them, with the same captions."""
    from zerocap.magic import decoder

    cfgs = [MagicConfig(k=9, max_tokens=4), MagicConfig(k=5, max_tokens=3, cond_text="Image of a")]
    targets = [Target(engine.targets.image_target(images[i]), f"img{i}") for i in range(2)]

    def captions():
        requests = [engine.request(t, engine.check(c)) for t, c in zip(targets, cfgs)]
        batch = requests[0].new_batch(engine)
        decode(requests, batch)
        return [batch.result(r).caption for r in requests]
    whole = captions()
    monkeypatch.setattr(decoder, "CANDIDATE_ROWS", 4)
    assert captions() == whole


def test_magic_shares_the_scheduler_with_the_other_methods_each_as_alone(engine, images):
    from zerocap.scheduler import Scheduler

    target = Target(engine.targets.image_target(images[1]), "image")
    cfgs = [MagicConfig(k=10, max_tokens=4), MagicConfig(k=30, beta=1.0, max_tokens=3, cond_text="Image of a"),
            engine.config("caption", top_k=16, beam_size=2, max_tokens=2),
            methods.PSEUDO_TOKENS.config("caption", sentence_iterations=2, max_tokens=3, beam_size=2)]
    alone = [engine.decode_targets([target], engine.check(c))[0] for c in cfgs]
    scheduler = Scheduler(engine, max_batch=4)
    try:
        requests = [engine.request(target, engine.check(c)) for c in cfgs]
        tickets = [scheduler.submit(r) for r in requests]
        results = [t.result(timeout=120) for t in tickets]
    finally:
        scheduler.close()
    assert [r.caption for r in results] == [r.caption for r in alone]
    assert [type(r).__name__ for r in results] == ["MagicResult", "MagicResult", "CaptionResult", "PseudoTokenResult"]
    assert max(requests[0].shared + requests[1].shared) == 2  # the two MAGIC requests shared steps


def test_the_command_line_and_dataset_jobs(capsys, lm_dir, clip_file, images, tmp_path):
    models = ["--lm", lm_dir, "--clip", clip_file, "--device", "cpu"]
    assert main(["caption", images[0], "--method", "magic", "--k", "12", "--max-tokens", "4", "--json", *models]) == 0
    (r,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    s = r["settings"]  # the knobs that differ from MAGIC's defaults, and the defaults' version
    assert r["method"] == s["method"] == "magic" and (s["k"], s["max_tokens"], s["defaults"]) == (12, 4, 1)
    assert not {"alpha", "beta", "clip_text_max_len", "cond_text"} & set(s)
    assert len(r["step_tokens"]) == r["timing"]["tokens"] <= 4
    out = str(tmp_path / "magic.jsonl")
    job = ["caption", *images[:3], "--method", "magic", "--k", "12", "--max-tokens", "3", "--out", out, *models]
    assert main(job) == 0
    lines = open(out).read().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["method"] == "magic" for line in lines)
    assert main(job) == 0 and open(out).read().splitlines() == lines  # resumed: nothing left to do
    capsys.readouterr()
    assert main([*job[:-len(models) - 2], "--k", "13", "--out", out, *models]) == 2
    assert "was made with k 12 (now 13)" in capsys.readouterr().err


@pytest.mark.parametrize("args, said", [
    (["--alpha", "2"], "alpha must be a number in [0, 1], got 2.0"),
    (["--k", "0"], "k must be an integer from 1 to 1000, got 0"),
    (["--num-iterations", "3"], "num_iterations is a knob of method zerocap, not of magic"),
    (["--compile"], "--compile compiles ZeroCap's decoding step; method magic runs eagerly"),
    (["--preset", "ocr"], "method magic has no presets"),
])
def test_bad_input_is_refused_in_words(capsys, lm_dir, clip_file, images, args, said):
    assert main(["caption", images[0], "--method", "magic", *args, "--lm", lm_dir, "--clip", clip_file]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


def test_a_bfloat16_lm_runs_without_gradients(lm_dir, clip_file, images):
    """No gradient steps: MAGIC takes an LM in any dtype (the pseudo-token method refuses one)."""
    engine = ZeroCap.load(lm_dir, clip_file, device="cpu", lm_dtype="bfloat16")
    r = engine.caption([images[0]], method="magic", k=8, max_tokens=3)[0]
    assert r.tokens == len(r.step_tokens) >= 1
