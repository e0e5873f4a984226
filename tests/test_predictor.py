"""Predictor (predict.py) called directly: setup + run, input checks, OOM and cancellation."""
import inspect
import os
import sys

import pytest
import torch
from cog import CancelationException, Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import predict  # noqa: E402

SMALL = {"beam_size": 2, "max_tokens": 2, "top_k": 16}


@pytest.fixture(scope="module")
def predictor(weights_root):
    mp = pytest.MonkeyPatch()
    mp.setenv("ZEROCAP_WEIGHTS", weights_root)
    mp.setenv("ZEROCAP_OFFLINE", "1")
    mp.setenv("ZEROCAP_DEVICE", "cpu")
    p = predict.Predictor()
    p.setup()
    yield p
    mp.undo()


def run(p, **inputs):
    """Call run() with the declared defaults, as the server does."""
    kwargs = {name: param.default.default for name, param in predict.RUN_INPUTS.items() if name != "self"}
    kwargs.update(inputs)
    return p.run(**kwargs)


def test_caption(predictor, images, capsys):
    out = run(predictor, image=Path(images[0]), **SMALL)
    assert out.caption == out.beams[0] and out.caption.startswith("Image of a")
    assert len(out.beams) == len(out.clip_scores) == len(out.perplexities) == len(out.beam_scores) == 2
    assert out.mode == "caption" and out.target == "image" and out.tokens == 2
    assert "token 1/2: Image of a" in capsys.readouterr().out


def test_ocr_preset_and_own_end_factor(predictor, images):
    out = run(predictor, mode="ocr", image=Path(images[0]), end_factor=1.5, **SMALL)
    assert out.cond_text == "Image of text that says" and out.caption.startswith("Image of text that says")


def test_arithmetic(predictor, images):
    out = run(predictor, mode="arithmetic", images=[Path(p) for p in images[:3]], image_weights=[1, 1, -1], **SMALL)
    assert out.target == "+1 x image img0.png +1 x image img1.png -1 x image img2.png"


def test_every_input_is_documented_and_typed():
    for name, param in predict.RUN_INPUTS.items():
        if name == "self":
            continue
        assert param.annotation is not inspect.Parameter.empty, name
        assert param.default.description, name


@pytest.mark.parametrize("inputs,message", [
    ({"mode": "caption"}, "mode caption needs `image`"),
    ({"mode": "knowledge", "image": "x", "texts": ["a"]}, "texts are for mode=arithmetic"),
    ({"mode": "arithmetic"}, "mode arithmetic needs `images`"),
    ({"mode": "arithmetic", "images": ["x"] * 17}, "at most 16 images and texts"),
    ({"mode": "arithmetic", "texts": ["a", "b"], "text_weights": [1]}, "got 2 text(s) but 1 text_weights"),
    ({"mode": "arithmetic", "images": ["x"], "image_weights": [float("nan")]}, "finite numbers in [-10, 10]"),
])
def test_check_inputs(inputs, message):
    args = {"mode": "caption", "image": None, "images": None, "image_weights": None, "texts": None,
            "text_weights": None, **inputs}
    with pytest.raises(ValueError) as e:
        predict.check_inputs(**args)
    assert message in str(e.value)


@pytest.mark.parametrize("inputs,message", [
    ({"beam_size": 21}, "beam_size must be between 1 and 20, got 21"),
    ({"top_k": 0}, "top_k must be between 1 and 2048, got 0"),
    ({"fusion_factor": float("nan")}, "fusion_factor must be a finite number"),
    ({"mode": "haiku"}, "mode must be one of caption, knowledge, ocr, arithmetic"),
])
def test_declared_ranges_are_enforced_without_a_schema(predictor, images, inputs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        run(predictor, image=Path(images[0]), **inputs)


def test_out_of_memory_fails_the_prediction_with_advice(predictor, images, monkeypatch):
    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(predictor.model, "caption", oom)
    with pytest.raises(ValueError, match="out of GPU memory: lower beam_size or top_k"):
        run(predictor, image=Path(images[0]), **SMALL)


def test_cancellation_is_reraised(predictor, images, monkeypatch):
    def cancel(*a, progress=None, **k):
        progress(1, 2, [" half"])
        raise CancelationException()

    monkeypatch.setattr(predictor.model, "caption", cancel)
    with pytest.raises(CancelationException):
        run(predictor, image=Path(images[0]), **SMALL)
