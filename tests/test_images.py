"""Image files read right and with bounded work (zerocap/images.py), whatever reaches CLIP."""
import io
import os
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from zerocap import InputError
from zerocap.images import MAX_ASPECT, MAX_IMAGE_PIXELS, bound_aspect, load_image, probe_image

LIMIT = "at most 80,000,000 pixels (80 MP) are accepted"


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="image file not found: .*nope.png"):
        load_image(tmp_path / "nope.png")


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(InputError, match="not a file"):
        load_image(tmp_path)


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("hello, I am text")
    with pytest.raises(InputError, match="not an image: .*notes.jpg"):
        load_image(p)
    with pytest.raises(InputError, match="not an image: the upload"):
        load_image(p, name="the upload")  # messages name the image as told


def test_truncated_image(tmp_path, images):
    p = tmp_path / "cut.jpg"
    Image.open(images[0]).resize((256, 256)).save(p, quality=95)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_image(p)


@pytest.mark.parametrize("size", [(10_000, 9_000), (10_000, 8_001), (20_000, 10_000)],
                         ids=["90 MP (over PIL's warning)", "just over 80 MP", "200 MP (over PIL's own limit)"])
def test_one_size_limit_said_the_same_way(tmp_path, size):
    """A few kB on disk; refused before decoding, with the same limit whatever PIL itself would say."""
    p = tmp_path / "bomb.png"
    Image.new("1", size).save(p)
    assert os.path.getsize(p) < 300_000 and size[0] * size[1] > MAX_IMAGE_PIXELS
    for read in (load_image, probe_image):
        with pytest.raises(InputError) as e:
            read(p)
        assert str(e.value).startswith(f"image too large: {p} has {size[0] * size[1]:,} pixels")
        assert str(e.value).endswith(LIMIT)


def test_exactly_the_limit_is_accepted(tmp_path):
    p = tmp_path / "big.png"
    Image.new("1", (10_000, 8_000)).save(p)
    assert probe_image(p) == (10_000, 8_000)


def test_modes_and_exif_rotation(tmp_path):
    p = tmp_path / "rot.jpg"
    img = Image.new("RGB", (40, 20), "red")
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(p, exif=exif)
    assert load_image(p).size == (20, 40)
    q = tmp_path / "alpha.png"
    Image.new("RGBA", (8, 8), (0, 0, 255, 10)).save(q)
    assert load_image(q).mode == "RGB" and load_image(q).getpixel((0, 0)) == (0, 0, 255)


GREY16 = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)


def eight_bit(values) -> np.ndarray:
    return np.rint(values).astype(np.uint8)


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    """convert("RGB") alone clips a 16-bit PNG to white (99.6% of this gradient)."""
    p = tmp_path / "grey16.png"
    Image.fromarray(GREY16).save(p)
    assert Image.open(p).mode == "I;16"
    got = np.asarray(load_image(p))
    assert got.shape == (48, 64, 3) and (got[..., 0] == got[..., 2]).all()
    np.testing.assert_array_equal(got[..., 0], eight_bit(GREY16 / 257))


def test_16_bit_colour_png_reads_as_8_bit(tmp_path):
    """PIL reduces 16-bit RGB PNGs to 8 bits itself (by the high byte); checked, not assumed."""
    rgb = np.stack([GREY16, GREY16[::-1], np.full_like(GREY16, 40000)], -1)
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    p = tmp_path / "rgb16.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 48, 16, 2, 0, 0, 0))
                  + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    got = np.asarray(load_image(p)).astype(int)
    assert np.abs(got - rgb / 257).max() <= 1  # within one 8-bit step of the exact scaling


def test_float_images_in_0_1_or_0_255_are_scaled(tmp_path):
    unit = GREY16.astype(np.float32) / 65535
    p = tmp_path / "unit.tiff"
    Image.fromarray(unit).save(p)
    assert Image.open(p).mode == "F"
    np.testing.assert_array_equal(np.asarray(load_image(p))[..., 1], eight_bit(unit.astype(np.float64) * 255))
    Image.fromarray(unit * 255).save(p)
    np.testing.assert_array_equal(np.asarray(load_image(p))[..., 1], eight_bit((unit * 255).astype(np.float64)))


@pytest.mark.parametrize("array,message", [
    (np.full((8, 8), 300.0, np.float32), "floating-point pixels from 300 to 300; only values in [0, 1] or [0, 255]"),
    (np.full((8, 8), -1.0, np.float32), "floating-point pixels from -1 to -1"),
    (np.full((8, 8), np.nan, np.float32), "floating-point pixels include NaN or infinity"),
    (np.full((8, 8), 70000, np.int32), "32-bit integer pixels from 70000 to 70000; only 0..65535"),
], ids=["float > 255", "negative float", "NaN", "int32 > 65535"])
def test_what_cannot_be_read_right_is_refused(tmp_path, array, message):
    p = tmp_path / "odd.tiff"
    Image.fromarray(array).save(p)
    with pytest.raises(InputError, match="cannot read image .*odd.tiff: " + re.escape(message)):
        load_image(p)


def test_32_bit_integers_within_16_bits_are_scaled(tmp_path):
    p = tmp_path / "int.tiff"
    Image.fromarray(GREY16.astype(np.int32)).save(p)
    np.testing.assert_array_equal(np.asarray(load_image(p))[..., 0], eight_bit(GREY16 / 257))


@pytest.mark.parametrize("size,kept", [((400_000, 1), (MAX_ASPECT, 1)), ((3, 1000), (3, 3 * MAX_ASPECT)),
                                       ((800, 100), (800, 100)), ((640, 480), (640, 480))])
def test_long_thin_images_keep_their_central_part(size, kept):
    img = Image.new("RGB", size)
    out = bound_aspect(img)
    assert out.size == kept
    if kept == size:
        assert out is img  # ordinary images reach CLIP untouched


def test_the_central_part_holds_what_clip_sees(engine):
    """CLIP keeps the central square of the image scaled to its short side; cutting a long image to
    its central 8:1 part first changes the features only by resampling."""
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 256, (20, 2000, 3), dtype=np.uint8))
    cut = engine.targets.raw_image(wide)
    whole = engine.scorer.clip.encode_image(engine.targets.preprocess(wide)[None])[0]
    cos = float(cut @ whole / (cut.norm() * whole.norm()))
    assert cos > 0.99


def test_a_tiny_file_costs_little_memory(tmp_path, engine):
    """1 x 400,000 pixels, ~1 kB on disk; without the bound CLIP's preprocessing makes it gigabytes."""
    import resource

    p = tmp_path / "thin.png"
    Image.new("RGB", (400_000, 1), (10, 200, 30)).save(p)
    assert os.path.getsize(p) < 4000
    engine.targets.image_target(str(p))  # warm
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    engine.targets.image_target(str(p))
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 100  # MB


def test_pil_images_are_checked_too(engine):
    with pytest.raises(InputError, match="cannot read image image 1: floating-point pixels from 300 to 300"):
        engine.caption([Image.fromarray(np.full((8, 8), 300.0, np.float32))], top_k=8, beam_size=2, max_tokens=1)
    grey16 = Image.fromarray(GREY16)
    a = engine.targets.image_target(grey16)
    b = engine.targets.image_target(Image.fromarray(eight_bit(GREY16 / 257)))
    assert bool((a == b).all())


def test_a_png_in_memory_round_trip_is_what_the_file_gives(tmp_path):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (9, 7, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    p = tmp_path / "x.png"
    p.write_bytes(buf.getvalue())
    assert np.array_equal(np.asarray(load_image(p)), np.asarray(img))


@pytest.mark.slow
def test_an_arithmetic_target_decodes_one_image_at_a_time(tmp_path, lm_dir, clip_file, images):
    """Four 80 MP images (8-bit RGB: 240 MB each once decoded): peak memory is that of one, not four."""
    import subprocess
    import sys

    script = f"""
import resource, warnings
warnings.filterwarnings("ignore")
from PIL import Image
from zerocap import ZeroCap
paths = []
for i in range(4):
    img = Image.new("1", (10_000, 8_000))
    img.paste(1, (i * 1000, 0, i * 1000 + 3000, 4000))
    img.save(f"{tmp_path}/big{{i}}.png")
    paths.append(f"{tmp_path}/big{{i}}.png")
zc = ZeroCap.load({lm_dir!r}, {clip_file!r}, device="cpu")
zc.arithmetic([{images[0]!r}, {images[1]!r}], [1, 1], top_k=16, beam_size=2, max_tokens=2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
zc.arithmetic(paths, [1, 1, -1, 1], top_k=16, beam_size=2, max_tokens=2)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.split()[-1]) < 700  # MB; all four held at once would be over 960
