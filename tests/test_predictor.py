"""predict.Predictor called directly, as coglet calls it: setup, then run(**request inputs).

Files reach run() as cog makes them from a URL or data URL (a download into the temp folder);
these tests make them the same way (`sent`). tests/test_cog_server.py sends a few of these
requests through the real server, with and without the generated schema.
"""
import asyncio
import base64
import os
import time
import sys
import tempfile
import typing

import pytest
import torch
from cog import Path
from cog.types import URLPath

from zerocap import InputError

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import predict  # noqa: E402

SMALL = {"beam_size": 2, "max_tokens": 2, "top_k": 16}
RULE = ("send the file as a URL (https://...) or a data URL (data:image/png;base64,...);"
        " files on the server are not read")


@pytest.fixture(scope="module")
def predictor(weights_root):
    mp = pytest.MonkeyPatch()
    mp.setenv("ZEROCAP_WEIGHTS", weights_root)
    mp.setenv("ZEROCAP_OFFLINE", "1")
    mp.setenv("ZEROCAP_DEVICE", "cpu")
    p = predict.Predictor()
    p.setup()
    yield Sync(p)
    p.scheduler.close()
    mp.undo()


class Sync:
    """The predictor with run() awaited, as coglet awaits it (one event loop per call here)."""

    def __init__(self, predictor):
        self.predictor = predictor

    def run(self, **inputs):
        return asyncio.run(self.predictor.run(**inputs))

    def __getattr__(self, name):
        return getattr(self.predictor, name)


def sent(path, url=None):
    """The file as run() gets it when the request names `url` (default: a data URL of the file)."""
    if url is None:
        with open(path, "rb") as f:
            return Path.validate("data:image/png;base64," + base64.b64encode(f.read()).decode()).convert()
    return URLPath(source=url, filename=url.rsplit("/", 1)[1], fileobj=open(path, "rb")).convert()


def test_caption(predictor, images, capsys):
    out = predictor.run(image=sent(images[0]), **SMALL)
    assert out.caption == out.beams[0] and out.caption.startswith("Image of a")
    assert len(out.beams) == len(out.clip_scores) == len(out.perplexities) == len(out.beam_scores) == 2
    assert out.mode == "caption" and out.target == "image" and out.tokens == 2
    assert "token 1/2: Image of a" in capsys.readouterr().out


def test_a_urls_file_name_names_the_target(predictor, images):
    out = predictor.run(image=sent(images[0], "https://example.com/photos/cat.png"), **SMALL)
    assert out.target == "cat.png"


def test_ocr_preset_and_own_end_factor(predictor, images):
    out = predictor.run(mode="ocr", image=sent(images[0]), end_factor=1.5, **SMALL)
    assert out.cond_text == "Image of text that says" and out.caption.startswith("Image of text that says")


def test_arithmetic_names_what_the_user_sent(predictor, images):
    files = [sent(images[0], "https://x.org/woman.jpg"), sent(images[1], "https://x.org/king.jpg"), sent(images[2])]
    out = predictor.run(mode="arithmetic", images=files, image_weights=[1, 1, -1], **SMALL)
    assert out.target == "+1 x woman.jpg +1 x king.jpg -1 x image 3"
    assert tempfile.gettempdir() not in out.target


def test_arithmetic_takes_image_as_its_first_term(predictor, images):
    """`cog run -i images=@a.jpg` sends one file, not a list; `-i image=@a.jpg` works in arithmetic."""
    a = predictor.run(mode="arithmetic", image=sent(images[0]), texts=["a crown"], text_weights=[0.5], **SMALL)
    b = predictor.run(mode="arithmetic", images=[sent(images[0])], texts=["a crown"], text_weights=[0.5], **SMALL)
    assert a.target == b.target == "+1 x image 1 +0.5 x text 'a crown'" and a.beams == b.beams


@pytest.mark.parametrize("inputs,message", [
    ({"mode": "caption"}, "mode caption needs `image`"),
    ({"mode": "knowledge", "image": 0, "texts": ["a"]}, "mode knowledge takes `image`, not `texts` (`texts` is for"
                                                         " mode arithmetic)"),
    ({"mode": "arithmetic"}, "mode arithmetic needs images and/or texts to combine"),
    ({"mode": "arithmetic", "images": [0] * 17}, "at most 16 images and texts together, got 17"),
    ({"mode": "arithmetic", "texts": ["a", "b"], "text_weights": [1]}, "got 2 text(s) but 1 text_weights"),
    ({"mode": "arithmetic", "image": 0, "images": [1], "image_weights": [1]}, "got 2 image(s) but 1 image_weights"),
    ({"mode": "arithmetic", "images": [0], "image_weights": [50]}, "image_weights must be numbers from -10 to 10,"
                                                                    " got [50]"),
    ({"mode": "arithmetic", "images": [0, 0], "image_weights": [1, -1]}, "(nearly) zero"),
])
def test_mode_and_terms(predictor, images, inputs, message):
    files = [sent(p) for p in images]
    inputs = {k: ([files[i] for i in v] if k == "images" else files[v] if k == "image" else v)
              for k, v in inputs.items()}
    with pytest.raises(InputError) as e:
        predictor.run(**{**SMALL, **inputs})
    assert message in str(e.value)


@pytest.mark.parametrize("inputs,message", [
    ({"bogus": 1}, "unknown input bogus; the inputs are: mode, method, image, images, image_weights, texts,"),
    ({"sed": 3, "bogus": 1}, "unknown inputs bogus, sed;"),
    ({"method": "pseudo-tokens", "num_iterations": 3}, "num_iterations, top_k are knobs of method zerocap, not of"
                                                       " pseudo-tokens"),  # (SMALL's top_k too)
    ({"sentence_iterations": 3, "seed": 2}, "seed, sentence_iterations are knobs of method pseudo-tokens, not of"
                                            " zerocap"),
    ({"method": "pseudo-tokens", "token_wise": 1}, "token_wise must be true or false, got 1"),
    ({"method": "pseudo-tokens", "lr_schedule": "linear"}, "lr_schedule must be one of constant, cosine, exponential"),
    ({"method": "pseudo-tokens", "sentence_iterations": 61}, "sentence_iterations must be an integer from 1 to 60"),
    ({"method": "sat"}, "method must be one of zerocap, pseudo-tokens, magic, got \"sat\""),
    ({"texts": "a crown"}, "texts must be a list of values, each a string; got the single value \"a crown\""),
    ({"texts": [1, 2]}, "texts[0] must be a string, got 1"),
    ({"texts": [None]}, "texts[0] must be a string, got null"),
    ({"image_weights": 1}, "image_weights must be a list of values, each a number; got the single value 1"),
    ({"image_weights": [1, "a"]}, "image_weights[1] must be a number, got \"a\""),
    ({"image": 5}, "image: " + RULE),
    ({"beam_size": "x"}, "beam_size must be an integer from 1 to 20, got \"x\""),
    ({"beam_size": 2.5}, "beam_size must be an integer from 1 to 20, got 2.5"),
    ({"beam_size": True}, "beam_size must be an integer from 1 to 20, got true"),
    ({"beam_size": 21}, "beam_size must be an integer from 1 to 20, got 21"),
    ({"top_k": 0}, "top_k must be an integer from 1 to 2048, got 0"),
    ({"top_k": 10 ** 400}, "top_k must be an integer from 1 to 2048, got 1000000000000000000000000000"),
    ({"stepsize": 10 ** 400}, "stepsize must be a number from 0 to 3, got 1000000000000000000000000000"),
    ({"fusion_factor": float("nan")}, "fusion_factor must be a number from 0 to 1, got NaN"),
    ({"end_factor": 5.0}, "end_factor must be a number from 0.5 to 2, got 5.0"),
    ({"mode": "haiku"}, "mode must be one of caption, knowledge, ocr, arithmetic, video, got \"haiku\""),
    ({"mode": None}, "mode must be one of caption, knowledge, ocr, arithmetic, video, got null"),
    ({"cond_text": "x" * 400}, "cond_text is 400 characters long; at most 300 are allowed"),
    ({"cond_text": "a " * 100}, "cond_text is too long for CLIP"),
    ({"beam_size": 5, "top_k": 3}, "beam_size (5) must not exceed top_k (3)"),
])
def test_every_wrong_input_is_answered_in_words(predictor, images, inputs, message):
    """What a server without the generated schema passes through untouched."""
    with pytest.raises(InputError) as e:
        predictor.run(**{"image": sent(images[0]), **SMALL, **inputs})
    assert message in str(e.value)


def test_integral_floats_count_as_integers(predictor, images):
    assert predictor.run(image=sent(images[0]), beam_size=2.0, max_tokens=1.0, top_k=16).tokens == 1


@pytest.mark.parametrize("value", [
    "/etc/hostname", "/nonexistent", "predict.py", "file:///etc/hostname", Path("/etc/hostname"),
    "tmp_in_cwd", os.path.join(tempfile.gettempdir(), "tmpabcdefghx.png"),
], ids=["absolute", "missing", "relative", "file-url", "Path", "named-like-cog", "str-in-tmp"])
def test_files_on_the_server_are_never_read(predictor, value, tmp_path):
    """Whatever names a file on the server (or not) gets one answer that tells nothing about it."""
    if value == "tmp_in_cwd":  # a cog.Path outside the temp folder, named like a download
        value = Path(tmp_path / "tmpabcdefghcat.png")
        value.write_bytes(b"x")
    for inputs in ({"image": value}, {"mode": "arithmetic", "images": [value]}):
        with pytest.raises(InputError) as e:
            predictor.run(**{**inputs, **SMALL})
        field = "image" if "image" in inputs else "images[0]"
        assert str(e.value) == f"{field}: {RULE}"


def test_a_list_mixing_a_download_and_a_server_path_is_refused(predictor, images):
    """coglet downloads a list only when every item is a URL: [data URL, path] arrive undownloaded."""
    pending = Path.validate("data:image/png;base64," + base64.b64encode(open(images[0], "rb").read()).decode())
    assert isinstance(pending, URLPath)
    with pytest.raises(InputError, match=r"images\[0\]: send the file as a URL"):
        predictor.run(mode="arithmetic", images=[pending, "/etc/hostname"], **SMALL)


def test_a_bad_image_file_is_named_as_sent(predictor, tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello, not an image")
    with pytest.raises(InputError) as e:
        predictor.run(image=sent(str(p), "https://x.org/notes.png"), **SMALL)
    assert str(e.value).startswith("not an image: notes.png (use JPEG") and tempfile.gettempdir() not in str(e.value)


def test_out_of_memory_fails_the_prediction_with_advice(predictor, images, monkeypatch):
    """A request that does not fit on its own (the scheduler splits batches first)."""
    import zerocap.batch

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(zerocap.batch.Batch, "_logprobs", oom)
    with pytest.raises(InputError, match="out of memory: lower beam_size or top_k"):
        predictor.run(image=sent(images[0]), **SMALL)
    monkeypatch.undo()
    assert predictor.run(image=sent(images[0]), **SMALL).caption.startswith("Image of a")  # it goes on


def test_a_cancelled_prediction_leaves_the_batch_and_the_next_one_runs(predictor, images):
    """coglet cancels an async prediction by cancelling its task: the request leaves the batch
    before the next step (it does not run to its end), and the predictor serves the next one."""
    import zerocap.batch

    async def cancel_after_a_token():
        task = asyncio.ensure_future(predictor.predictor.run(image=sent(images[2]), beam_size=2, top_k=16,
                                                             max_tokens=40))
        while not predictor.scheduler.requests or predictor.scheduler.requests[0].step < 1:
            await asyncio.sleep(0.01)
        request = predictor.scheduler.requests[0]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return request

    request = asyncio.run(cancel_after_a_token())
    deadline = time.time() + 30
    while predictor.scheduler.load and time.time() < deadline:
        time.sleep(0.01)
    assert predictor.scheduler.load == 0 and request not in predictor.scheduler.requests
    assert isinstance(request, zerocap.batch.Request) and not request.done  # it left before its end
    assert predictor.run(image=sent(images[0]), **SMALL).caption.startswith("Image of a")


@pytest.fixture(scope="module")
def clip_file_mkv(tmp_path_factory, images):
    av = pytest.importorskip("av")
    import numpy as np
    from PIL import Image

    path = str(tmp_path_factory.mktemp("video") / "clip.mkv")
    frame = np.asarray(Image.open(images[1]).convert("RGB"))
    with av.open(path, "w") as c:
        s = c.add_stream("ffv1", rate=10)
        s.height, s.width, s.pix_fmt = frame.shape[0], frame.shape[1], "bgr0"
        for _ in range(10):
            for packet in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def test_video_mode(predictor, clip_file_mkv, images):
    out = predictor.run(mode="video", video=sent(clip_file_mkv, "https://x.org/clips/walk.mkv"), frames=4, **SMALL)
    assert out.mode == "video" and out.target == "walk.mkv" and len(out.frame_times) == 4
    assert out.frame_times == sorted(out.frame_times) and out.caption.startswith("Image of a")
    assert out.frames == 4 and out.frames_asked == 4
    still = predictor.run(image=sent(images[1]), **SMALL)  # every frame is this image
    assert out.beams == still.beams and still.frame_times == []


@pytest.mark.parametrize("inputs,message", [
    ({"mode": "video"}, "mode video needs `video`"),
    ({"mode": "video", "video": "clip", "image": 0}, "mode video takes `video` (and `frames`), not `image` (`image`"
                                                     " is for modes caption, knowledge, ocr and arithmetic)"),
    ({"mode": "caption", "video": "clip", "image": 0}, "mode caption takes `image`, not `video` (`video` is for mode"
                                                       " video)"),
    ({"mode": "video", "video": "clip", "frames": 65}, "frames must be an integer from 1 to 64, got 65"),
    ({"mode": "video", "video": "/etc/hostname"}, "video: " + RULE.replace("data:image/png", "data:video/mp4")),
    ({"mode": "video", "video": "text"}, "cannot read video video: it is truncated or corrupt"),
])
def test_video_inputs(predictor, clip_file_mkv, images, inputs, message, tmp_path):
    (tmp_path / "notes.txt").write_text("not a video")
    files = {"clip": sent(clip_file_mkv), 0: sent(images[0]), "text": sent(str(tmp_path / "notes.txt"))}
    inputs = {k: files.get(v, v) if k in ("image", "video") else v for k, v in inputs.items()}
    with pytest.raises(InputError) as e:
        predictor.run(**{**SMALL, **inputs})
    assert message in str(e.value)


def test_the_health_check_says_when_the_decoder_is_broken(predictor, images, monkeypatch):
    """coglet calls healthcheck(): healthy while the scheduler and the device work; a device that
    fails (here a simulated CUDA error) makes it raise with the reason, for /health-check to report."""
    assert predictor.healthcheck() is True
    monkeypatch.setattr(predictor.scheduler, "error", "CUDA error: an illegal memory access was encountered")
    with pytest.raises(RuntimeError, match="illegal memory access"):
        predictor.healthcheck()
    monkeypatch.undo()
    monkeypatch.setattr(predictor.scheduler._thread, "is_alive", lambda: False)
    with pytest.raises(RuntimeError, match="the decoding loop has stopped"):
        predictor.healthcheck()
    monkeypatch.undo()
    assert predictor.healthcheck() is True


PT_SMALL = {"method": "pseudo-tokens", "sentence_iterations": 2, "max_tokens": 3, "beam_size": 2}


def test_a_clip_by_the_pseudo_token_method_reads_their_frames_and_collapses_a_still(predictor, clip_file_mkv):
    """10 frames at 10 fps, all one picture: every 3rd frame (10 fps // 3) is sampled, 4 frames, and
    their near-duplicate filter keeps the first."""
    out = predictor.run(mode="video", video=sent(clip_file_mkv, "https://x.org/clips/still.mkv"), **PT_SMALL)
    assert out.method == "pseudo-tokens" and out.target == "still.mkv"
    assert out.frames_asked == 4 and out.frames == 1 and out.frame_times == [0.0]
    assert len(out.sentences) == 2 and out.caption == out.best_clip and out.seed == 0


def test_the_pseudo_token_method_in_python_and_in_the_container_agree(predictor, images):
    """The container's output is the method's result for the same settings."""
    from zerocap import PseudoTokenConfig

    out = predictor.run(image=sent(images[2]), seed=5, **PT_SMALL)
    zc = predictor.predictor.model
    want = zc.caption([images[2]], config=PseudoTokenConfig(seed=5, sentence_iterations=2, max_tokens=3,
                                                            beam_size=2))[0]
    assert out.sentences == [s.text for s in want.sentences] and out.caption == want.best_clip
    assert out.beams == [b.caption for b in want.beams] and out.best_mixed == want.best_mixed
    same = zc.caption([images[2]], method="pseudo-tokens", seed=5, sentence_iterations=2, max_tokens=3,
                      beam_size=2)[0]
    assert [s.text for s in same.sentences] == out.sentences


MAGIC_SMALL = {"method": "magic", "k": 8, "max_tokens": 3}


def test_magic_in_python_and_in_the_container_agree_and_bad_input_is_said(predictor, images):
    out = predictor.run(image=sent(images[1]), **MAGIC_SMALL)
    want = predictor.predictor.model.caption([images[1]], method="magic", k=8, max_tokens=3)[0]
    assert (out.caption, out.step_tokens, out.tokens) == (want.caption, want.step_tokens, want.tokens)
    assert out.method == "magic" and out.seed == -1 and out.beams == [] and len(out.step_clip_scores) == out.tokens
    for inputs, said in [({"alpha": 1.5}, "alpha must be a number from 0 to 1, got 1.5"),
                         ({"k": 201}, "k must be an integer from 1 to 200, got 201"),
                         ({"top_k": 16}, "top_k is a knob of method zerocap, not of magic")]:
        with pytest.raises(InputError) as e:
            predictor.run(image=sent(images[1]), **{**MAGIC_SMALL, **inputs})
        assert said in str(e.value)


def _holds(value, doc: str) -> bool:
    """A field's value against its declared description's fixed values."""
    if doc.startswith("empty"):
        return value in ([], "")
    if doc.startswith("-1 "):
        return value == -1
    if doc.startswith("mode video:") and doc.endswith("else empty"):
        return value in ([], "")
    if doc.startswith("mode video:") and doc.endswith("else 0"):
        return value == 0
    return True


@pytest.mark.parametrize("method", ["zerocap", "pseudo-tokens", "magic"])
def test_the_output_is_the_readmes_table_for_each_method(predictor, images, method):
    """Every field of Output is a method's declared output field (zerocap/outputs.py), the README's
    table is printed from those declarations, and each method's output holds what its column says
    is fixed (empty, -1, 0)."""
    import predict
    from test_config import readme_table
    from zerocap import methods, outputs

    served = list(methods.METHODS.values())
    declared = outputs.fields(served)
    fields = set(typing.get_type_hints(predict.Output))
    assert set(declared) == fields
    rows = {name.strip("`"): tuple(cells) for name, *cells in readme_table("Output: one JSON object")}
    assert rows == {name: tuple(outputs.said(m, name, f) for m in served) for name, f in declared.items()}
    inputs = {"zerocap": SMALL, "pseudo-tokens": PT_SMALL, "magic": MAGIC_SMALL}[method]
    out = predictor.run(image=sent(images[0]), **inputs)
    chosen = methods.get(method)
    assert out.method == method == outputs.said(chosen, "method", declared["method"])
    for name in fields:
        assert _holds(getattr(out, name), outputs.said(chosen, name, declared[name])), (name, getattr(out, name))


def test_frames_sent_are_honoured_by_every_method_8_included(predictor, clip_file_mkv):
    """`frames` sent is what is sampled, for every method (8, ZeroCap's default, included: it used
    to be taken for 'not sent'); not sent, each method samples as it does, and says how."""
    video = sent(clip_file_mkv, "https://x.org/clips/still.mkv")
    for frames in (8, 7):
        out = predictor.run(mode="video", video=video, frames=frames, **PT_SMALL)
        assert out.frames_asked == frames and out.frames_sampling == f"{frames} frames spread evenly", frames
    own = predictor.run(mode="video", video=video, **PT_SMALL)
    assert own.frames_asked == 4 and own.frames_sampling == "every 3rd frame (10 fps // 3)"
    zc = predictor.run(mode="video", video=video, **SMALL)
    assert zc.frames_asked == 8 and zc.frames_sampling == "8 frames spread evenly"
    magic = predictor.run(mode="video", video=video, **MAGIC_SMALL)  # ZeroCap's sampling: the frames' mean
    assert (magic.frames_asked, magic.frames_sampling, magic.frames, magic.frame_times) == (8, "8 frames spread evenly",
                                                                                             zc.frames, zc.frame_times)
    assert predictor.run(mode="video", video=video, frames=64, **SMALL).frames_asked == 64  # the CLI's 64 served
