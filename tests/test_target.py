"""Target embeddings and every bad image or arithmetic input."""
import os

import pytest
import torch
from PIL import Image

from zerocap.target import MAX_IMAGE_PIXELS, check_weights, load_image


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="image file not found: .*nope.png"):
        load_image(tmp_path / "nope.png")


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ValueError, match="not a file"):
        load_image(tmp_path)


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("hello, I am text")
    with pytest.raises(ValueError, match="not an image: .*notes.jpg"):
        load_image(p)


def test_truncated_image(tmp_path, images):
    p = tmp_path / "cut.jpg"
    Image.open(images[0]).resize((256, 256)).save(p, quality=95)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_image(p)


def test_decompression_bomb(tmp_path):
    p = tmp_path / "bomb.png"
    Image.new("1", (10_000, 9_000)).save(p)  # 90 MP of one-bit pixels: a few kB on disk
    assert os.path.getsize(p) < 100_000
    with pytest.raises(ValueError, match="image too large.*decompression bomb"):
        load_image(p)
    assert 10_000 * 9_000 > MAX_IMAGE_PIXELS


def test_modes_and_exif_rotation(tmp_path):
    p = tmp_path / "rot.jpg"
    img = Image.new("RGB", (40, 20), "red")
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(p, exif=exif)
    assert load_image(p).size == (20, 40)
    q = tmp_path / "alpha.png"
    Image.new("RGBA", (8, 8), (0, 0, 255, 10)).save(q)
    assert load_image(q).mode == "RGB"


def test_weights_must_match_images():
    with pytest.raises(ValueError, match=r"got 3 image\(s\) but 2 image weight\(s\)"):
        check_weights(["a", "b", "c"], [1, -1])
    with pytest.raises(ValueError, match="must be a finite number"):
        check_weights(["a"], [float("nan")])
    assert check_weights(["a", "b"], None) == [1.0, 1.0]


def test_same_image_plus_and_minus_is_rejected(engine, images):
    with pytest.raises(ValueError, match=r"\(nearly\) zero.*\+1 x image .*img0.png, -1 x image .*img0.png"):
        engine.arithmetic([images[0], images[0]], [1, -1])


def test_arithmetic_target_is_the_normalised_weighted_sum(engine, images):
    from zerocap.target import Term

    t = engine.targets.combine([Term(1.0, image=images[0]), Term(2.0, image=images[1]), Term(-0.5, text="a cat")])
    raw = engine.targets.raw_image(images[0]) + 2 * engine.targets.raw_image(images[1]) - 0.5 * engine.targets.raw_text("a cat")
    torch.testing.assert_close(t, raw / raw.norm())
    assert t.norm().item() == pytest.approx(1.0)


def test_engine_checks_inputs_against_the_models(engine, images):
    with pytest.raises(ValueError, match="top_k must be between 1 and 8192, got 60000"):
        engine.caption([images[0]], top_k=60000)
    with pytest.raises(ValueError, match="cond_text is too long for the LM"):
        engine.caption([images[0]], cond_text="word " * 120)
    with pytest.raises(ValueError, match="cond_text is too long for CLIP: 80 CLIP tokens; at most 74"):
        engine.caption([images[0]], cond_text="a " * 80)
    with pytest.raises(ValueError, match="beam_size .* must not exceed top_k"):
        engine.caption([images[0]], beam_size=9, top_k=8)
    with pytest.raises(ValueError, match="give at least one image"):
        engine.caption([])


def test_long_candidate_texts_are_truncated_not_fatal(engine, images):
    """A prompt near CLIP's limit plus a long GPT-2 token would overflow 77 CLIP tokens."""
    r = engine.caption([images[0]], cond_text="a " * 74, top_k=16, beam_size=2, max_tokens=2)[0]
    assert len(r.beams) == 2 and all(b.caption.startswith("a a a") for b in r.beams)
