"""Video: frames sampled with PyAV, their mean CLIP embedding captioned; videos are made here in code."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from zerocap import InputError
from zerocap.cli import main
from zerocap.video import MAX_DECODED, frames_at, sample_times

av = pytest.importorskip("av")
FAST = ["--top-k", "16", "--beam-size", "2", "--max-tokens", "2", "--device", "cpu"]


def write_video(path, frames, fps=12, codec="ffv1", pix_fmt="bgr0", **options):
    """frames: (H, W, 3) uint8 arrays. ffv1 in bgr0 is lossless: decoded frames equal the arrays."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps, options=options)
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = pix_fmt
        for a in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return str(path)


def square(i, w=64, h=48):
    """A white square moving right by 2 px per frame on a dark background."""
    a = np.full((h, w, 3), 30, np.uint8)
    a[10:26, 2 * i:2 * i + 16] = 255
    return a


@pytest.fixture(scope="module")
def moving(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "moving.mkv", [square(i) for i in range(24)])  # 2 s


def test_frames_spread_evenly_or_every_few_seconds(moving):
    got = list(frames_at(moving, "moving.mkv", frames=4))
    assert [t for t, _ in got] == pytest.approx([0.25, 0.75, 1.25, 1.75])  # the middle of each quarter
    for t, image in got:  # the frame shown at t, exactly (lossless)
        assert np.array_equal(np.asarray(image), square(round(t * 12)))
    assert [t for t, _ in frames_at(moving, "moving.mkv", every=0.5)] == pytest.approx([0, 0.5, 1.0, 1.5])
    assert sample_times(10.0) == pytest.approx([0.625 + 1.25 * i for i in range(8)])  # default: 8 frames


def test_the_target_is_the_mean_of_the_normalised_frame_embeddings(engine, moving):
    from zerocap.video import video_target

    target, extra = video_target(engine, moving, "moving.mkv", frames=3)
    assert extra == {"frame_times": pytest.approx([1 / 3, 1.0, 5 / 3], abs=1e-3)}  # the frames nearest the times
    embs = [engine.targets.raw_image(Image.fromarray(square(round(t * 12)))) for t in extra["frame_times"]]
    mean = sum(e / e.norm() for e in embs) / 3
    np.testing.assert_allclose(target.numpy(), (mean / mean.norm()).numpy(), rtol=0, atol=1e-6)


def test_a_still_video_captions_like_its_frame_as_an_image(engine, tmp_path, images):
    frame = np.asarray(Image.open(images[0]).convert("RGB"))
    clip = write_video(tmp_path / "still.mkv", [frame] * 10)
    as_video = engine.video([clip], frames=5, top_k=32, beam_size=3, max_tokens=4)[0]
    as_image = engine.caption([images[0]], top_k=32, beam_size=3, max_tokens=4)[0]
    assert [b.text for b in as_video.beams] == [b.text for b in as_image.beams]
    assert [b.score for b in as_video.beams] == pytest.approx([b.score for b in as_image.beams], rel=1e-5)
    assert len(as_video.frame_times) == 5 and as_video.target == clip and as_video.to_dict()["frame_times"]
    assert "frame_times" not in as_image.to_dict()


def audio_only(path):
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in s.encode(frame):
            c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return str(path)


def no_frames(path, width=64, height=48):
    """An AVI with a video stream and no frame (its header says the frame size)."""
    path = str(path).replace(".mkv", ".avi")
    with av.open(path, "w") as c:
        s = c.add_stream("ffv1", rate=12)
        s.width, s.height, s.pix_fmt = width, height, "bgr0"
        c.start_encoding()
    return path


def truncated(path, moving):
    data = open(moving, "rb").read()
    open(path, "wb").write(data[: len(data) // 3])
    return str(path)


@pytest.mark.parametrize("make,message", [
    (lambda p, m: (open(p, "w").write("hello, not a video"), str(p))[1], "not a video: clip"),
    (lambda p, m: audio_only(p), "no video stream in clip"),
    (lambda p, m: no_frames(p), "no frames could be read from clip"),
    (lambda p, m: no_frames(p, 12_000, 8_000), "video too large: clip has frames of 96,000,000 pixels (12000x8000);"
                                                " at most 80,000,000 pixels (80 MP) are accepted"),
    (truncated, "clip"),
], ids=["text", "audio only", "no frames", "huge resolution", "truncated"])
def test_bad_videos_are_refused_in_words(tmp_path, moving, make, message):
    path = make(tmp_path / "clip.mkv", moving)
    if message == "clip":  # a truncated file may still give its first frames: then it is no error
        try:
            assert list(frames_at(path, "clip", frames=8))
        except InputError as e:
            assert "clip" in str(e) and ("truncated or corrupt" in str(e) or "not a video" in str(e))
        return
    with pytest.raises(InputError) as e:
        list(frames_at(path, "clip", frames=4))
    assert message in str(e.value)


def test_too_many_frames_or_too_much_decoding_is_refused(moving, tmp_path):
    with pytest.raises(InputError, match="a frame every 0.01 s of a 2.0 s clip is 200 frames; at most 64"):
        list(frames_at(moving, "moving.mkv", every=0.01))
    with pytest.raises(InputError, match="frames must be an integer from 1 to 64, got 65"):
        list(frames_at(moving, "moving.mkv", frames=65))
    # one key frame for 6,000 frames: every seek decodes from the start
    long = write_video(tmp_path / "long.mp4", [np.full((16, 16, 3), i % 256, np.uint8) for i in range(6000)],
                       fps=100, codec="libx264", pix_fmt="yuv420p", g="100000", keyint_min="100000",
                       sc_threshold="0")
    with pytest.raises(InputError, match=f"cannot sample long within {MAX_DECODED} decoded frames"):
        list(frames_at(long, "long", frames=8))


def test_the_command(capsys, moving, tmp_path, lm_dir, clip_file, images):
    models = ["--lm", lm_dir, "--clip", clip_file, *FAST]
    code = main(["video", moving, *models, "--frames", "3", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["video"] == moving and out["frame_times"] == pytest.approx([1 / 3, 1.0, 5 / 3], abs=1e-3)
    folder = tmp_path / "clips"
    folder.mkdir()
    os.symlink(moving, folder / "a.mkv")
    (folder / "b.mp4").write_text("not a video")
    (folder / "notes.txt").write_text("not a video extension: not an input")
    out_file = tmp_path / "videos.jsonl"
    code = main(["video", str(folder), *models, "--out", str(out_file), "--every", "1"])
    err = capsys.readouterr().err
    lines = [json.loads(x) for x in out_file.read_text().splitlines()]
    assert code == 1 and "captioned 1, failed 1;" in err
    assert {x["video"]: ("error" in x) for x in lines} == {str(folder / "a.mkv"): False, str(folder / "b.mp4"): True}
    assert next(x for x in lines if "error" not in x)["frame_times"] == [0.0, 1.0]
    assert main(["video", moving, *models, "--frames", "2", "--every", "1"]) == 2
    assert "give --frames or --every, not both" in capsys.readouterr().err
