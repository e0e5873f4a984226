"""Both forms of the engine give the literal reference decoder's beams, in fp32, on seeded cases.

Beams (texts and order) must be equal exactly, scores to tests/numeric.py's SCORE_REL (which
says why). On a given machine the exact form is usually bit-for-bit the reference (see README),
but that is not asserted.
"""
import pytest
import torch

from numeric import FORMS, RERUN, assert_same_beams
from reference_decoder import ReferenceDecoder
from tiny_models import write_tiny_clip, write_tiny_gpt2, write_tiny_gpt_neo
from zerocap import InputError, ZeroCap, ZeroCapConfig, preset

SMALL = dict(top_k=48, beam_size=3, max_tokens=4)
_REFERENCE: dict = {}


def reference(engine, target, cfg, key, bos_prefix=True):
    """The reference decoder's (texts, scores), computed once per key for both forms."""
    if key not in _REFERENCE:
        ref = ReferenceDecoder(engine.lm, engine.tokenizer, engine.scorer.clip, engine.forbidden.nonzero()[:, 0].tolist(),
                               cfg, bos_prefix=bos_prefix)
        _REFERENCE[key] = ref.run(target[None], cfg.cond_text)
    return _REFERENCE[key]


def assert_same(result, ref):
    assert_same_beams(result, ref)


@pytest.fixture
def engines(engine, exact_engine):
    return {"fast": engine, "exact": exact_engine}


def load(lm, clip, form):
    return ZeroCap.load(lm, clip, device="cpu", form=form)


CASES = {
    "paper defaults": ZeroCapConfig(**SMALL),
    "knowledge preset": preset("knowledge", **SMALL),
    "repetition, end boost from step 0": ZeroCapConfig(repetition_penalty=1.5, end_factor=1.3,
                                                       end_factor_from=0, forbidden_factor=3.0, **SMALL),
    "strong end token: beams stop": ZeroCapConfig(end_factor=8.0, top_k=48, beam_size=4, max_tokens=5),
    "no fluency loss, one beam": ZeroCapConfig(ce_scale=0.0, top_k=32, beam_size=1, max_tokens=3),
    "empty prompt (BOS only)": ZeroCapConfig(cond_text="", stepsize=0.8, **SMALL),
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", list(CASES))
def test_caption_matches_reference(engines, images, name, form):
    cfg = CASES[name]
    result = engines[form].caption([images[0]], config=cfg)[0]
    target = engines["exact"].targets.image_target(images[0])
    assert_same(result, reference(engines["exact"], target, cfg, ("tiny", name)))
    if name == "strong end token: beams stop":
        assert any(b.text.endswith(".") for b in result.beams)  # the case exercises stopped beams


@pytest.mark.parametrize("form", FORMS)
def test_batch_of_images_matches_reference_per_image(engines, images, form):
    """The fast form decodes the images as one batch; the exact form one at a time."""
    cfg = ZeroCapConfig(**SMALL)
    results = engines[form].caption(images[:3], config=cfg)
    for i, (img, result) in enumerate(zip(images[:3], results)):
        target = engines["exact"].targets.image_target(img)
        assert_same(result, reference(engines["exact"], target, cfg, ("tiny", "paper defaults", i)))


@pytest.mark.parametrize("form", FORMS)
def test_arithmetic_matches_reference(engines, images, form):
    cfg = preset("arithmetic", **SMALL)
    result = engines[form].arithmetic(images[:3], [1, 1, -1], config=cfg)
    raws = [engines["exact"].targets.raw_image(p) for p in images[:3]]
    target = raws[0] * 1 + raws[1] * 1 + raws[2] * -1
    assert_same(result, reference(engines["exact"], target / target.norm(), cfg, ("tiny", "arithmetic")))


@pytest.fixture(scope="module")
def other_sizes(tmp_path_factory):
    d = tmp_path_factory.mktemp("sizes")
    return (write_tiny_gpt2(str(d / "lm"), seed=7, n_layer=3, n_embd=48, n_head=3, init=0.3),
            write_tiny_clip(str(d / "clip.pt"), seed=7, layers=1))


@pytest.mark.parametrize("form", FORMS)
def test_other_seeds_and_sizes_match_reference(other_sizes, images, form):
    engine = load(*other_sizes, form)
    cfg = ZeroCapConfig(top_k=40, beam_size=3, max_tokens=4, num_iterations=3)
    result = engine.caption([images[1]], config=cfg)[0]
    assert_same(result, reference(engine, engine.targets.image_target(images[1]), cfg, ("sizes",)))


@pytest.mark.parametrize("form", FORMS)
def test_gpt_neo_without_bos_prefix_matches_reference(tmp_path_factory, images, clip_file, form):
    engine = load(write_tiny_gpt_neo(str(tmp_path_factory.mktemp("neo"))), clip_file, form)
    assert engine.prompt_prefix == "" and engine.lm_adapter.step is None  # GPT-Neo: the generic forward
    zc = ZeroCapConfig(**SMALL)
    result = engine.caption([images[2]], config=zc)[0]
    target = engine.targets.image_target(images[2])
    assert_same(result, reference(engine, target, zc, ("neo",), bos_prefix=False))
    with pytest.raises(InputError, match="cond_text must not be empty"):
        engine.caption([images[2]], config=zc.replace(cond_text=""))


@pytest.mark.parametrize("form", FORMS)
def test_near_uniform_lm_matches_reference(tmp_path_factory, images, clip_file, form):
    """GPT-2's default init (0.02): nearly flat distributions, where a rounding change could
    reorder candidates."""
    engine = load(write_tiny_gpt2(str(tmp_path_factory.mktemp("flat")), seed=11, init=0.02), clip_file, form)
    cfg = ZeroCapConfig(top_k=64, beam_size=3, max_tokens=4)
    result = engine.caption([images[0]], config=cfg)[0]
    assert_same(result, reference(engine, engine.targets.image_target(images[0]), cfg, ("flat",)))


@RERUN
@pytest.mark.parametrize("chunk_tokens", [64, 1 << 20], ids=["small passes", "one pass"])
def test_fast_form_both_clip_pass_layouts_match_reference(engine, images, chunk_tokens, monkeypatch):
    """The candidates' CLIP suffixes in many small packed passes, and in the GPU's one pass."""
    monkeypatch.setattr(engine.scorer, "chunk_tokens", chunk_tokens)
    cfg = ZeroCapConfig(**SMALL)
    target = engine.targets.image_target(images[0])
    assert_same(engine.caption([images[0]], config=cfg)[0], reference(engine, target, cfg, ("tiny", "paper defaults")))


@pytest.mark.parametrize("form,chunk_tokens", [("exact", 64), pytest.param("fast", 64, marks=RERUN),
                                               pytest.param("fast", 1 << 20, marks=RERUN)])
def test_prompt_near_clips_77_tokens_matches_reference(engines, images, form, chunk_tokens, monkeypatch):
    """Candidate rows reach CLIP's context limit and are truncated, as clip.tokenize(truncate=True)."""
    engine = engines[form]
    monkeypatch.setattr(engine.scorer, "chunk_tokens", chunk_tokens)
    cfg = ZeroCapConfig(cond_text="Image of a " + "big " * 68 + "red", top_k=32, beam_size=2, max_tokens=4)
    assert len(engine.scorer.candidates.encode(cfg.cond_text)) == 72
    result = engine.caption([images[1]], config=cfg)[0]
    target = engine.targets.image_target(images[1])
    assert_same(result, reference(engine, target, cfg, ("tiny", "77 tokens")))


def test_a_second_caption_carries_no_state_from_the_first(engine, images):
    """The fast form keeps caches (CLIP pieces, re-encoded words, per-step features): captioning
    another image in between must not change a caption."""
    cfg = ZeroCapConfig(**SMALL)
    first = engine.caption([images[3]], config=cfg)[0]
    engine.caption([images[1]], config=cfg.replace(cond_text="A photo of"))
    again = engine.caption([images[3]], config=cfg)[0]
    assert [(b.text, b.score) for b in again.beams] == [(b.text, b.score) for b in first.beams]


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
    for name, tensor in a.scorer.clip.state_dict().items():  # the same weights, hence the same model
        assert torch.equal(tensor, b.scorer.clip.state_dict()[name]), name


@pytest.mark.slow
def test_random_cases_agree_with_the_reference():
    """bench/agreement.py on a few random models, prompts and settings (100 cases: bench/RESULTS.md)."""
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "agreement.py")
    run = subprocess.run([sys.executable, script, "--cases", "8", "--seed", "1", "--results", ""],
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "| exact | 8 of 8 |" in run.stdout and "| fast | 8 of 8 |" in run.stdout, run.stdout[-2000:]
