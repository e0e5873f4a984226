"""Target embeddings and every bad arithmetic input (image files: test_images.py)."""
import pytest
import torch

from zerocap import InputError
from zerocap.modes import TERMS_KIND


def test_weights_must_match_images():
    with pytest.raises(InputError, match=r"got 3 image\(s\) but 2 image weights"):
        TERMS_KIND.weights([1, -1], 3, "image")
    with pytest.raises(InputError, match=r"image weights must be finite numbers, got \[nan\]"):
        TERMS_KIND.weights([float("nan")], 1, "image")
    with pytest.raises(InputError, match=r"image_weights must be numbers from -10 to 10, got \[11\]"):
        TERMS_KIND.weights([11], 1, "image", "image_weights", served=True)
    assert TERMS_KIND.weights(None, 2, "image") == [1.0, 1.0]


def test_same_image_plus_and_minus_is_rejected(engine, images):
    with pytest.raises(InputError, match=r"\(nearly\) zero.*\+1 x .*img0.png, -1 x .*img0.png"):
        engine.arithmetic([images[0], images[0]], [1, -1])


def test_arithmetic_target_is_the_normalised_weighted_sum(engine, images):
    from zerocap.target import Term

    t = engine.targets.combine([Term(1.0, image=images[0]), Term(2.0, image=images[1]), Term(-0.5, text="a cat")])
    raw = engine.targets.raw_image(images[0]) + 2 * engine.targets.raw_image(images[1]) - 0.5 * engine.targets.raw_text("a cat")
    torch.testing.assert_close(t, raw / raw.norm())
    assert t.norm().item() == pytest.approx(1.0)


def test_engine_checks_inputs_against_the_models(engine, images):
    with pytest.raises(InputError, match="top_k must be an integer from 1 to 8192, got 60000"):
        engine.caption([images[0]], top_k=60000)
    with pytest.raises(InputError, match="cond_text must be at most 300 characters, got 600"):
        engine.caption([images[0]], cond_text="word " * 120)
    with pytest.raises(InputError, match="cond_text is too long for the LM"):  # the tiny LM's 128 positions
        engine.caption([images[0]], cond_text="word " * 55, max_tokens=100)
    with pytest.raises(InputError, match="cond_text is too long for CLIP: 80 CLIP tokens; at most 74"):
        engine.caption([images[0]], cond_text="a " * 80)
    with pytest.raises(InputError, match="beam_size .* must not exceed top_k"):
        engine.caption([images[0]], beam_size=9, top_k=8)
    with pytest.raises(InputError, match="give at least one image"):
        engine.caption([])


def test_long_candidate_texts_are_truncated_not_fatal(engine, images):
    """A prompt near CLIP's limit plus a long GPT-2 token would overflow 77 CLIP tokens."""
    r = engine.caption([images[0]], cond_text="a " * 74, top_k=16, beam_size=2, max_tokens=2)[0]
    assert len(r.beams) == 2 and all(b.caption.startswith("a a a") for b in r.beams)
