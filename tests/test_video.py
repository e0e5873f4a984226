"""Video: frames sampled with PyAV, their mean CLIP embedding captioned; videos are made here in code."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from numeric import assert_same_beams
from zerocap import InputError
from zerocap.cli import main
from zerocap import video as zvideo
from zerocap.video import FrameSampler, frames_at, sample_times

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

    target, frames_used = video_target(engine, moving, "moving.mkv", frames=3)
    extra = frames_used.to_dict()
    assert extra == {"frame_times": pytest.approx([1 / 3, 1.0, 5 / 3], abs=1e-3), "frames": 3,
                     "frames_asked": 3}  # the frames nearest the times
    embs = [engine.targets.raw_image(Image.fromarray(square(round(t * 12)))) for t in extra["frame_times"]]
    mean = sum(e / e.norm() for e in embs) / 3
    np.testing.assert_allclose(target.numpy(), (mean / mean.norm()).numpy(), rtol=0, atol=1e-6)


def test_a_still_video_captions_like_its_frame_as_an_image(engine, tmp_path, images):
    frame = np.asarray(Image.open(images[0]).convert("RGB"))
    clip = write_video(tmp_path / "still.mkv", [frame] * 10)
    as_video = engine.video([clip], frames=5, top_k=32, beam_size=3, max_tokens=4)[0]
    as_image = engine.caption([images[0]], top_k=32, beam_size=3, max_tokens=4)[0]
    assert_same_beams(as_video, as_image)
    assert len(as_video.details.times) == 5 and as_video.target == clip and as_video.to_dict()["frame_times"]
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


def test_too_many_frames_or_too_much_decoding_is_refused(moving, tmp_path, monkeypatch):
    with pytest.raises(InputError, match="a frame every 0.01 s of a 2.0 s clip is 200 frames; at most 64"):
        list(frames_at(moving, "moving.mkv", every=0.01))
    with pytest.raises(InputError, match="frames must be an integer from 1 to 64, got 65"):
        list(frames_at(moving, "moving.mkv", frames=65))
    # one key frame for 6,000 frames: every seek decodes from the start
    long = write_video(tmp_path / "long.mp4", [np.full((16, 16, 3), i % 256, np.uint8) for i in range(6000)],
                       fps=100, codec="libx264", pix_fmt="yuv420p", g="100000", keyint_min="100000",
                       sc_threshold="0")
    monkeypatch.setattr(zvideo, "MAX_DECODED_PIXELS", 5000 * 16 * 16)  # the bound, for this clip's size
    with pytest.raises(InputError, match="cannot sample long within 20,000,000,000 decoded pixels"):
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


def mjpeg(path, sizes, fps=4):
    """An MJPEG clip whose frames have the given (width, height): each packet is its own JPEG, so
    a small first frame can hide large ones (what a header check alone lets through)."""
    import io
    from fractions import Fraction

    with av.open(str(path), "w") as c:
        s = c.add_stream("mjpeg", rate=fps)
        s.width, s.height, s.pix_fmt = sizes[0][0], sizes[0][1], "yuvj420p"
        c.start_encoding()
        for i, (w, h) in enumerate(sizes):
            buf = io.BytesIO()
            Image.new("RGB", (w, h), (40 * i % 256, 90, 160)).save(buf, "JPEG", quality=30)
            p = av.Packet(buf.getvalue())
            p.stream, p.time_base, p.pts, p.dts = s, Fraction(1, fps), i, i
            c.mux(p)
    return str(path)


def test_a_large_frame_after_a_small_first_one_is_refused_before_it_is_decoded(tmp_path):
    """The issue's clip: a 64x64 first frame, then frames over 80 MP. FFmpeg refuses each before
    allocating it (max_pixels), so the process's memory stays where it was."""
    import resource

    path = mjpeg(tmp_path / "bomb.mkv", [(64, 64)] + [(9000, 9000)] * 3)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match=r"video too large: clip has frames of 81,000,000 pixels \(9000x9000\)"):
        list(frames_at(path, "clip", frames=4))
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 100  # MB; a frame is 120 MB


def test_a_codec_that_may_hold_many_large_frames_is_refused_by_its_worst_case(tmp_path, monkeypatch):
    """H.264 may hold 16 reference frames and more for reordering: what that costs at the clip's
    frame size must fit the decoder's budget (here made small, with a small clip)."""
    import zerocap.video

    clip = write_video(tmp_path / "x.mp4", [square(i, 128, 96) for i in range(6)], codec="libx264",
                       pix_fmt="yuv420p")
    assert len(list(frames_at(clip, "x", frames=2))) == 2  # 128x96 x 1.5 bytes x 18 frames = 332 kB: fine
    monkeypatch.setattr(zerocap.video, "DECODER_BUDGET", 300_000)
    with pytest.raises(InputError, match=r"video too large to decode within memory: x has 128x96 frames \(yuv420p\)"
                                         r" and its codec may hold 1[89] of them \(3\d\d kB\); at most 300 kB"):
        list(frames_at(clip, "x", frames=2))
    # an intra-only codec holds no other frame: the same budget passes a frame that fits
    monkeypatch.setattr(zerocap.video, "DECODER_BUDGET", 128 * 96 * 2 * 2)
    assert len(list(frames_at(mjpeg(tmp_path / "m.mkv", [(128, 96)] * 4), "m", frames=2))) == 2


@pytest.mark.slow
def test_a_real_h264_clip_of_67_mp_frames_stays_within_the_memory_bound(tmp_path):
    """8192x8192 H.264 with 16 reference frames: decoding it would take 2.3 GB (seen here). It is
    refused, in a fresh process whose peak memory (VmHWM) grows by far less than 1.5 GB."""
    import subprocess
    import sys

    clip = write_video(tmp_path / "big.mp4", [np.full((8192, 8192, 3), 9 * i, np.uint8) for i in range(3)],
                       fps=4, codec="libx264", pix_fmt="yuv420p", refs="16", preset="ultrafast")
    code = (
        "import sys\n"
        "from zerocap.video import frames_at\n"
        "from zerocap import InputError\n"
        "def hwm():\n"
        "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) // 1024\n"
        "before = hwm()\n"
        "try:\n"
        f"    list(frames_at({clip!r}, 'big', frames=3))\n"
        "except InputError as e:\n"
        "    print(e)\n"
        "print(hwm() - before)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    message, grew = out.stdout.strip().splitlines()
    assert "video too large to decode within memory: big has 8192x8192 frames" in message, out.stderr
    assert int(grew) < 1500  # MB


def test_times_that_fall_on_one_frame_use_it_once_and_the_result_says_so(tmp_path, engine, monkeypatch):
    """A one-frame clip is decoded once, not once per sampled time; a truncated clip's repeated
    last frame counts once; the result says how many distinct frames of how many asked."""
    import zerocap.video

    one = mjpeg(tmp_path / "one.mkv", [(64, 48)])
    calls = []
    real = zerocap.video._Reader._decode_to
    monkeypatch.setattr(zerocap.video._Reader, "_decode_to", lambda *a, **k: calls.append(a) or real(*a, **k))
    sampler = FrameSampler(one, "one", frames=8)
    assert [t for t, _ in sampler] == [0.0] and sampler.asked == 8 and len(calls) == 1
    long = write_video(tmp_path / "long.mkv", [square(i) for i in range(24)], fps=12)  # 2 s
    cut = truncated(tmp_path / "cut.mkv", long)  # the header still says 2 s; the frames end early
    result = engine.video([cut], frames=8, top_k=16, beam_size=2, max_tokens=1)[0]
    times = result.details.times
    assert times == sorted(set(times)) and result.details.asked == 8 and 1 <= len(times) < 8
    d = result.to_dict()
    assert d["frames"] == len(times) and d["frames_asked"] == 8 and d["frame_times"] == times


def test_every_is_bounded_below_and_never_overflows():
    assert sample_times(2.0, every=1.0) == [0.0, 1.0]
    for every in (1e-320, 0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InputError, match="every must be a number of seconds from 0.001 up"):
            sample_times(2.0, every=every)
    with pytest.raises(InputError, match="a frame every 0.001 s of a 1000000000.0 s clip is"):
        sample_times(1e9, every=0.001)


# ---- ordinary clips: x264's default key frames (one every 250 frames) ------------------------------
@pytest.fixture(scope="module")
def x264_clips(tmp_path_factory):
    """20 s and 60 s, 30 fps, 96x72, encoded with x264's defaults (a key frame every 250 frames)."""
    d = tmp_path_factory.mktemp("x264")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)
    clips = {}
    for seconds in (20, 60):
        frames = [np.roll(base, i, axis=1) for i in range(30 * seconds)]  # a slow pan: every frame differs
        clips[seconds] = write_video(d / f"s{seconds}.mp4", frames, fps=30, codec="libx264", pix_fmt="yuv420p")
    return clips


@pytest.mark.parametrize("seconds", [20, 60])
def test_many_close_frames_are_read_in_one_pass_and_equal_the_frames_seeking_finds(x264_clips, seconds,
                                                                                     monkeypatch):
    """Every 10th frame (the pseudo-token method's sampling at 30 fps; 64 frames of the 60 s clip)
    of a clip with a key frame every 250 frames: one forward pass (each frame decoded at most
    once), the very frames a seek per time finds. Before: each time sought back to its key frame,
    and the 20 s clip passed the decode bound."""
    path, every = x264_clips[seconds], (1 / 3 if seconds == 20 else 0.94)
    readers = []
    real = zvideo._Reader._decode_to
    monkeypatch.setattr(zvideo._Reader, "_decode_to", lambda self, *a, **k: readers.append(self) or real(self, *a, **k))
    forward = [(t, np.asarray(im)) for t, im in FrameSampler(path, "clip", every=every)]
    assert len(forward) == (60 if seconds == 20 else 64)
    assert readers[0].decoded <= 30 * seconds  # one pass at most
    monkeypatch.setattr(zvideo._Reader, "forward", False)
    readers.clear()
    sought = [(t, np.asarray(im)) for t, im in FrameSampler(path, "clip", every=every)]
    assert readers[0].decoded > 30 * seconds  # (a seek per time decodes much more)
    assert [t for t, _ in sought] == [t for t, _ in forward]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(sought, forward))


@pytest.mark.parametrize("seconds", [20, 60])
def test_the_pseudo_token_method_reads_ordinary_clips_with_their_sampling(engine, x264_clips, seconds):
    from zerocap.pseudo_tokens.clips import clip_target

    target = clip_target(engine, x264_clips[seconds], "clip")
    details = target.details
    if seconds == 20:  # every 10th frame (30 fps // 3): 60 frames, within the 64 allowed
        assert details.sampled == 60 and details.sampling == "every 10th frame (30 fps // 3)"
    else:  # 180 would be more than 64: 64 spread evenly, said
        assert details.sampled == 64 and details.sampling.startswith("64 frames spread evenly")
    assert target.frames.shape[0] == len(details.times) >= 1


def test_zerocap_reads_an_ordinary_clip_every_half_second(x264_clips, engine):
    result = engine.video([x264_clips[20]], every=0.5, top_k=16, beam_size=2, max_tokens=1)[0]
    assert result.details.asked == 40 and len(result.details.times) == 40
