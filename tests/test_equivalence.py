"""The engine's beams equal the literal reference decoder's, in fp32, on seeded cases."""

import pytest
import torch

from reference_decoder import ReferenceDecoder
from tiny_models import write_tiny_clip, write_tiny_gpt2, write_tiny_gpt_neo
from zerocap import ZeroCap, ZeroCapConfig, preset

SMALL = dict(top_k=48, beam_size=3, max_tokens=4)


def reference_beams(engine, target, cfg, bos_prefix=True):
    ref = ReferenceDecoder(engine.lm, engine.tokenizer, engine.clip, engine.forbidden.nonzero()[:, 0].tolist(),
                           cfg, bos_prefix=bos_prefix)
    return ref.run(target[None], cfg.cond_text)


def assert_same(result, ref):
    texts, scores = ref
    assert [b.text for b in result.beams] == texts
    assert [b.score for b in result.beams] == scores  # bit for bit


CASES = {
    "paper defaults": ZeroCapConfig(**SMALL),
    "knowledge preset": preset("knowledge", **SMALL),
    "repetition, end boost from step 0": ZeroCapConfig(repetition_penalty=1.5, end_factor=1.3,
                                                       end_factor_from=0, forbidden_factor=3.0, **SMALL),
    "strong end token: beams stop": ZeroCapConfig(end_factor=8.0, top_k=48, beam_size=4, max_tokens=5),
    "no fluency loss, one beam": ZeroCapConfig(ce_scale=0.0, top_k=32, beam_size=1, max_tokens=3),
    "empty prompt (BOS only)": ZeroCapConfig(cond_text="", stepsize=0.8, **SMALL),
}


@pytest.mark.parametrize("name", list(CASES))
def test_caption_matches_reference(engine, images, name):
    cfg = CASES[name]
    result = engine.caption([images[0]], config=cfg)[0]
    assert_same(result, reference_beams(engine, engine.targets.image_target(images[0]), cfg))


def test_stopped_beams_case_really_stops(engine, images):
    result = engine.caption([images[0]], config=CASES["strong end token: beams stop"])[0]
    assert any(b.text.endswith(".") for b in result.beams)


def test_batch_of_images_matches_reference_per_image(engine, images):
    cfg = ZeroCapConfig(**SMALL)
    results = engine.caption(images[:3], config=cfg)
    for img, result in zip(images[:3], results):
        assert_same(result, reference_beams(engine, engine.targets.image_target(img), cfg))


def test_arithmetic_matches_reference(engine, images):
    cfg = preset("arithmetic", **SMALL)
    result = engine.arithmetic(images[:3], [1, 1, -1], config=cfg)
    raws = [engine.targets.raw_image(p) for p in images[:3]]
    target = raws[0] * 1 + raws[1] * 1 + raws[2] * -1
    assert_same(result, reference_beams(engine, target / target.norm(), cfg))


def test_other_seeds_and_sizes_match_reference(tmp_path, images):
    lm = write_tiny_gpt2(str(tmp_path / "lm"), seed=7, n_layer=3, n_embd=48, n_head=3, init=0.3)
    clip = write_tiny_clip(str(tmp_path / "clip.pt"), seed=7, layers=1)
    engine = ZeroCap.load(lm, clip, device="cpu")
    cfg = ZeroCapConfig(top_k=40, beam_size=3, max_tokens=4, num_iterations=3)
    result = engine.caption([images[1]], config=cfg)[0]
    assert_same(result, reference_beams(engine, engine.targets.image_target(images[1]), cfg))


def test_gpt_neo_without_bos_prefix_matches_reference(tmp_path, images, clip_file):
    engine = ZeroCap.load(write_tiny_gpt_neo(str(tmp_path / "neo")), clip_file, device="cpu")
    assert engine.prompt_prefix == ""
    zc = ZeroCapConfig(**SMALL)
    result = engine.caption([images[2]], config=zc)[0]
    assert_same(result, reference_beams(engine, engine.targets.image_target(images[2]), zc, bos_prefix=False))
    with pytest.raises(ValueError, match="cond_text must not be empty"):
        engine.caption([images[2]], config=zc.replace(cond_text=""))


def test_same_seed_same_beams(engine, images):
    cfg = ZeroCapConfig(**SMALL)
    a = engine.caption([images[3]], config=cfg, seed=1)[0]
    b = engine.caption([images[3]], config=cfg, seed=1)[0]
    assert [x.text for x in a.beams] == [x.text for x in b.beams]
    assert [x.score for x in a.beams] == [x.score for x in b.beams]


def test_near_uniform_lm_matches_reference(tmp_path, images, clip_file):
    """GPT-2's default init (0.02): nearly flat distributions, where any rounding change would
    reorder candidates."""
    lm = write_tiny_gpt2(str(tmp_path / "flat"), seed=11, init=0.02)
    engine = ZeroCap.load(lm, clip_file, device="cpu")
    cfg = ZeroCapConfig(top_k=64, beam_size=3, max_tokens=4)
    result = engine.caption([images[0]], config=cfg)[0]
    assert_same(result, reference_beams(engine, engine.targets.image_target(images[0]), cfg))


def test_fast_mode_batch_gives_the_reference_beams(lm_dir, clip_file, images):
    """exact=False: CLIP prefix keys/values reused, one LM pass per step, images batched."""
    engine = ZeroCap.load(lm_dir, clip_file, device="cpu")
    engine.exact = False
    cfg = ZeroCapConfig(**SMALL)
    results = engine.caption(images[:2], config=cfg)
    for img, result in zip(images[:2], results):
        texts, scores = reference_beams(engine, engine.targets.image_target(img), cfg)
        assert [b.text for b in result.beams] == texts
        assert [b.score for b in result.beams] == pytest.approx(scores, abs=1e-3)


def test_torchscript_clip_archive_loads_like_the_state_dict(tmp_path, lm_dir, clip_file, images):
    """OpenAI ships ViT-B-32.pt as a TorchScript archive; clip.load(path, jit=False) rebuilds it."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from clip.model import build_model

        model = build_model(torch.load(clip_file)).float().eval()
        archive = str(tmp_path / "ViT-B-32.pt")
        traced = torch.jit.trace(model, (torch.zeros(1, 3, 32, 32), torch.zeros(1, 77, dtype=torch.long)))
    torch.jit.save(traced, archive)
    a = ZeroCap.load(lm_dir, archive, device="cpu")
    b = ZeroCap.load(lm_dir, clip_file, device="cpu")
    assert torch.equal(a.targets.image_target(images[0]), b.targets.image_target(images[0]))


@pytest.mark.parametrize("exact,single_pass_tokens", [(True, 0), (False, 0), (False, 1 << 20)])
def test_prompt_near_clips_77_tokens_matches_reference(engine, images, exact, single_pass_tokens):
    """Candidate rows reach CLIP's context limit and are truncated, as clip.tokenize(truncate=True)."""
    cfg = ZeroCapConfig(cond_text="Image of a " + "big " * 68 + "red", top_k=32, beam_size=2, max_tokens=4)
    assert len(engine.candidates.encode(cfg.cond_text)) == 72
    saved = engine.exact, engine.scorer.single_pass_tokens
    engine.exact, engine.scorer.single_pass_tokens = exact, single_pass_tokens
    try:
        result = engine.caption([images[1]], config=cfg)[0]
    finally:
        engine.exact, engine.scorer.single_pass_tokens = saved
    texts, scores = reference_beams(engine, engine.targets.image_target(images[1]), cfg)
    assert [b.text for b in result.beams] == texts
    if exact:
        assert [b.score for b in result.beams] == scores
