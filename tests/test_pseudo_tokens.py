"""The pseudo-token method against a literal transcription of the authors' CapGenerator.py
(tests/reference_pseudo_tokens.py): the same sampled sentences, best captions and final beams,
in both forms, on images and on a clip."""
import copy
import random

import numpy as np
import pytest
import torch

from numeric import FORMS
from reference_pseudo_tokens import CLIPTextGenerator, filter_video, reference_args
from zerocap import InputError
from zerocap.modes import Target
from zerocap.pseudo_tokens import SCHEDULES, PseudoTokenConfig
from zerocap.pseudo_tokens.clips import clip_target, distinct_runs

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def ref_tokenizer(engine):
    return copy.deepcopy(engine.tokenizer)  # their constructor sets its pad token


def reference(engine, tokenizer, cfg, frames):
    gen = CLIPTextGenerator(engine.lm, tokenizer, engine.scorer.clip, **reference_args(cfg))
    by_clip, by_mixed, sentences, beams = gen.generate(frames)
    return {"sentences": sentences, "best_clip": by_clip[0], "best_mixed": by_mixed[0], "beams": beams}


def ours(engine, cfg, target):
    r = engine.pseudo_tokens.decode([target], cfg)[0]
    return {"sentences": [s.text for s in r.sentences], "best_clip": r.best_clip, "best_mixed": r.best_mixed,
            "beams": [b.text for b in r.beams]}


def random_case(rng: random.Random) -> PseudoTokenConfig:
    return PseudoTokenConfig(
        seed=rng.randrange(1000), sentence_iterations=rng.randint(1, 3), max_tokens=rng.randint(2, 7),
        sampling_top_k=rng.randint(1, 5), beam_size=rng.randint(1, 4), dummy_tokens=rng.randint(1, 6),
        learning_rate=rng.choice([0.006, 0.02, 0.1]), lr_schedule=rng.choice(SCHEDULES),
        token_wise=rng.random() < 0.6, randomized_prompt=rng.random() < 0.6,
        clip_temperature=rng.choice([1.0, 0.1]), ce_scale=rng.choice([0.8, 0.2]))


def image_frames(engine, path):
    v = engine.targets.image_target(path)
    return Target(v, path), v[None]


def compare(engine, tokenizer, cases, targets):
    agree, cases_seen = 0, []
    for cfg, (target, frames) in zip(cases, targets):
        got, want = ours(engine, cfg, target), reference(engine, tokenizer, cfg, frames)
        agree += got == want
        cases_seen.append((cfg, got == want))
    return agree, cases_seen


@pytest.fixture(scope="module")
def four_cases(engine, ref_tokenizer, images):
    """Four random cases and their code's outputs, computed once for both forms' test (the two
    engines hold the same models)."""
    rng = random.Random(1)
    cases = [random_case(rng) for _ in range(4)]
    theirs = [reference(engine, ref_tokenizer, cfg, image_frames(engine, images[i % len(images)])[1])
              for i, cfg in enumerate(cases)]
    return cases, theirs


@pytest.mark.parametrize("form", FORMS)
def test_both_forms_sample_what_their_code_samples(form, engine, exact_engine, four_cases, images):
    """Four random cases, every one the same. The exact form computes in their code's order, so it
    is held to every case here; the fast form's 90% rule over many cases is the slow test's."""
    eng = engine if form == "fast" else exact_engine
    cases, theirs = four_cases
    got = [ours(eng, cfg, image_frames(eng, images[i % len(images)])[0]) for i, cfg in enumerate(cases)]
    assert [g == t for g, t in zip(got, theirs)] == [True] * len(cases), list(zip(cases, got, theirs))


@pytest.mark.numeric
def test_the_defaults_of_their_readme_command(engine, ref_tokenizer, images):
    cfg = PseudoTokenConfig(sentence_iterations=2, max_tokens=6)  # token-wise, randomized prompts
    target, frames = image_frames(engine, images[0])
    assert ours(engine, cfg, target) == reference(engine, ref_tokenizer, cfg, frames)


@pytest.mark.slow
@pytest.mark.numeric
def test_the_fast_form_agrees_with_their_code_on_nine_cases_in_ten(engine, ref_tokenizer, images):
    rng = random.Random(7)
    cases = [random_case(rng) for _ in range(12)]
    targets = [image_frames(engine, images[i % len(images)]) for i in range(len(cases))]
    agree, seen = compare(engine, ref_tokenizer, cases, targets)
    assert agree >= 0.9 * len(cases), seen


def test_their_defaults_and_knob_ranges():
    d = PseudoTokenConfig()
    assert (d.seed, d.max_tokens, d.dummy_tokens, d.sentence_iterations, d.sampling_top_k, d.clip_temperature,
            d.clip_scale, d.ce_scale, d.beam_size, d.learning_rate, d.lr_schedule, d.weight_decay_scale,
            d.repetition_penalty, d.entity_penalty, d.ending_bonus, d.end_token, d.token_wise,
            d.randomized_prompt) == (0, 20, 5, 30, 3, 1.0, 1.0, 0.8, 5, 0.006, "cosine", 0.3, 2.0, 2.0, 2.0, ".",
                                     True, True)
    for bad, message in [(dict(sentence_iterations=0), "sentence_iterations must be an integer from 1 to 200"),
                         (dict(lr_schedule="linear"), "lr_schedule must be one of constant, cosine, exponential"),
                         (dict(learning_rate=float("nan")), "learning_rate must be a finite number"),
                         (dict(token_wise=1), "token_wise must be true or false")]:
        with pytest.raises(InputError, match=message):
            PseudoTokenConfig(**bad).validate()


# ---- a clip: every fps // 3-th frame, near-duplicates collapsed ---------------------------------------
def write_clip(path, fps=9):
    """3 s at 9 fps: runs of repeated frames (three different pictures, each held a while)."""
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    order = [0] * 8 + [1] * 10 + [2] * 4 + [0] * 5
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=fps)
        s.height, s.width, s.pix_fmt = 48, 64, "bgr0"
        for i in order:
            for packet in s.encode(av.VideoFrame.from_ndarray(pictures[i], format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return str(path), order


def their_frames(engine, path):
    """Their run.py: every (fps // 3)-th decoded frame, CLIP features normalised, filter_video."""
    from PIL import Image

    with av.open(path) as c:
        arrays = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    feats = []
    for a in arrays[::3]:  # 9 fps // 3
        e = engine.targets.raw_image(Image.fromarray(a))
        feats.append(e / e.norm())
    feats = torch.stack(feats).float()
    kept, indices = filter_video(feats, feats @ feats.T)
    return kept, indices


def test_a_clip_is_read_and_captioned_as_theirs(engine, ref_tokenizer, tmp_path):
    path, order = write_clip(tmp_path / "clip.mkv")
    target = clip_target(engine, path, "clip.mkv")
    frames, indices = their_frames(engine, path)
    assert target.details.sampled == 9 and target.details.sampling.startswith("every 3rd frame")
    assert [round(t * 9 / 3) for t in target.details.times] == indices  # the same frames kept
    assert torch.allclose(target.frames, frames, atol=1e-6)
    cfg = PseudoTokenConfig(sentence_iterations=2, max_tokens=5, seed=3)
    assert ours(engine, cfg, target) == reference(engine, ref_tokenizer, cfg, frames)


def test_the_near_duplicate_filter_keeps_the_first_of_each_run():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    near = torch.nn.functional.normalize(torch.tensor([1.0, 0.3]), dim=0)  # cosine 0.958 to a
    frames = torch.stack([a, near, a, b, b, a])
    assert distinct_runs(frames) == filter_video(frames, frames @ frames.T)[1] == [0, 3, 5]


def test_a_long_clip_is_capped_at_the_frames_allowed_spread_evenly(engine, tmp_path):
    path, _ = write_clip(tmp_path / "clip.mkv")  # every 3rd frame: 9
    target = clip_target(engine, path, "clip.mkv", most=4)  # a Cog request's limit, say
    assert target.details.sampled == 4
    assert target.details.sampling == "4 frames spread evenly (every 3rd frame would be more than 4)"


def test_a_compiled_zerocap_clip_is_not_used_for_these_rows(engine, images, monkeypatch):
    """On a GPU the container compiles CLIP's passes for ZeroCap's fixed-size buffers; the method's
    rows (512 candidates a request) go the eager way, with the same sentences."""
    cfg = PseudoTokenConfig(sentence_iterations=1, max_tokens=3)
    target, _ = image_frames(engine, images[0])
    want = ours(engine, cfg, target)
    monkeypatch.setattr(engine.scorer, "compiled", {})  # as compiled; any compiled pass would fail here
    assert ours(engine, cfg, target) == want


def test_the_lm_must_be_float32(lm_dir, clip_file, images):
    from zerocap import ZeroCap

    zc = ZeroCap.load(lm_dir, clip_file, device="cpu", lm_dtype="bfloat16")
    with pytest.raises(InputError, match="runs the LM in float32"):
        zc.caption([images[0]], method="pseudo-tokens", sentence_iterations=1)


def test_token_rules_are_theirs_on_rows_of_any_settings(engine, ref_tokenizer):
    """The vectorised rules (penalties as one table add, one step's rows of other settings
    together) against their update_special_tokens_logits, row by row: bit for bit -- the same
    elementwise IEEE operations on the same operands (each correctly rounded, whatever the CPU's
    vector kernels), and -inf where theirs puts it."""
    from zerocap.pseudo_tokens.rules import apply_rules

    g = torch.Generator().manual_seed(0)
    cfgs = [PseudoTokenConfig(max_tokens=8, entity_penalty=2.0), PseudoTokenConfig(max_tokens=8, entity_penalty=0.5,
            repetition_penalty=1.5, ending_bonus=3.0, sampling_top_k=5), PseudoTokenConfig(max_tokens=4)]
    prompt = engine.pseudo_tokens.prompt_ids("Image of")
    words = ref_tokenizer.encode(" a dog on a dog on a")  # a repeated 3-gram: "on a" then " dog" is barred
    contexts = [prompt + words[:n] for n in (0, 3, len(words))]
    steps = [0, 3, 3]  # the first token (its own unwanted set), a later one, the last row's ending forced
    rules = engine.pseudo_tokens.rules(".")
    V = rules.forbidden.shape[0]
    theirs = [CLIPTextGenerator(engine.lm, copy.deepcopy(ref_tokenizer), engine.scorer.clip, **reference_args(cfg))
              for cfg in cfgs]
    for trial in range(3):
        logits = torch.randn(3, V, generator=g) * 4
        logits[:, rules.end_id] += trial  # the end token above or below the top-k threshold
        ours = apply_rules([rules] * 3, cfgs, contexts, steps, logits.clone())
        for r, (ctx, step) in enumerate(zip(contexts, steps)):
            want = theirs[r].update_special_tokens_logits(torch.tensor([ctx]), step, logits[r:r + 1].clone())
            assert torch.equal(ours[r:r + 1], want), (trial, r)
            assert (want == -float("inf")).any()


@pytest.mark.numeric
def test_requests_of_other_end_tokens_share_a_step_each_with_its_output_alone(engine, images):
    """Each row's token rules use its own end token's tables (a letter end token changes which tokens
    are whitelisted and which are alike), also when rows of another end token share its step."""
    from zerocap.pseudo_tokens.batch import PseudoTokenBatch

    cfgs = [PseudoTokenConfig(sentence_iterations=2, max_tokens=5, beam_size=2, seed=1),
            PseudoTokenConfig(sentence_iterations=2, max_tokens=5, beam_size=2, seed=2, end_token=" and")]
    targets = [image_frames(engine, images[i])[0] for i in range(2)]
    alone = [ours(engine, c, t) for c, t in zip(cfgs, targets)]
    batch = PseudoTokenBatch(engine)
    requests = [engine.request(t, engine.check(c)) for c, t in zip(cfgs, targets)]
    for r in requests:
        batch.add(r)
    while len(batch):
        batch.step()
    together = [batch.result(r) for r in requests]
    assert [{"sentences": [s.text for s in r.sentences], "best_clip": r.best_clip, "best_mixed": r.best_mixed,
             "beams": [b.text for b in r.beams]} for r in together] == alone


@pytest.mark.numeric
def test_requests_of_any_settings_sharing_steps_each_give_what_their_code_gives(engine, ref_tokenizer, images):
    """Requests of other prefix lengths, lengths and schedules decoded together: the fast form's
    shared pass (each row's plain LM riding beside its prefixed one, a pass per prefix length) gives
    each one what their code gives it alone."""
    from zerocap.pseudo_tokens.batch import PseudoTokenBatch

    rng = random.Random(7)
    cases = [random_case(rng).replace(dummy_tokens=n) for n in (2, 5, 2)]
    targets = [image_frames(engine, images[i % len(images)]) for i in range(len(cases))]
    batch = PseudoTokenBatch(engine)
    requests = [engine.request(t, engine.check(c)) for c, (t, _) in zip(cases, targets)]
    for r in requests:
        batch.add(r)
    while len(batch):
        batch.step()
    for r, cfg, (_, frames) in zip(requests, cases, targets):
        got = batch.result(r)
        assert {"sentences": [s.text for s in got.sentences], "best_clip": got.best_clip,
                "best_mixed": got.best_mixed, "beams": [b.text for b in got.beams]} == \
            reference(engine, ref_tokenizer, cfg, frames), cfg


@pytest.mark.parametrize("call,said", [
    (dict(method="pseudo-tokens", num_iterations=3), "num_iterations is a knob of method zerocap, not of pseudo-tokens"),
    (dict(method="zerocap", config="pt"), "config is a pseudo-tokens config (PseudoTokenConfig) but method is 'zerocap'"),
    (dict(method="pseudo-tokens", config="zc"), "config is a zerocap config (ZeroCapConfig) but method is"
                                                " 'pseudo-tokens'"),
    (dict(beams=3), "unknown knob beams; the knobs of method zerocap: cond_text, beam_size"),
    (dict(method="greedy"), "unknown method 'greedy'; choose one of zerocap, pseudo-tokens"),
])
def test_the_python_api_refuses_a_mismatched_method_in_words(engine, images, call, said):
    from zerocap import InputError, ZeroCapConfig

    call = dict(call)
    if "config" in call:
        call["config"] = PseudoTokenConfig() if call["config"] == "pt" else ZeroCapConfig()
    with pytest.raises(InputError) as e:
        engine.caption([images[0]], **call)
    assert said in str(e.value), str(e.value)
