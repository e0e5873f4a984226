import math

import pytest

from zerocap import PRESETS, ZeroCapConfig, preset


def test_paper_defaults():
    c = ZeroCapConfig()
    assert (c.cond_text, c.beam_size, c.max_tokens, c.num_iterations, c.top_k) == ("Image of a", 5, 15, 5, 512)
    assert (c.clip_temperature, c.clip_scale, c.ce_scale, c.stepsize) == (0.01, 1.0, 0.2, 0.3)
    assert (c.grad_norm_factor, c.fusion_factor, c.repetition_penalty) == (0.9, 0.99, 1.0)
    assert (c.end_factor, c.end_factor_from, c.forbidden_factor, c.end_token) == (1.01, 1, 20.0, ".")


def test_presets_follow_the_papers_readme():
    assert preset("arithmetic").fusion_factor == 0.95 and preset("arithmetic").end_factor == 1.06
    assert preset("arithmetic").grad_norm_factor == 0.95
    assert (preset("knowledge").cond_text, preset("knowledge").end_factor) == ("Image of", 1.04)
    assert (preset("ocr").cond_text, preset("ocr").end_factor) == ("Image of text that says", 1.04)
    assert preset("ocr", end_factor=None).end_factor == 1.04  # None keeps the preset's value
    assert preset("ocr", end_factor=1.2).end_factor == 1.2
    assert set(PRESETS) == {"caption", "arithmetic", "knowledge", "ocr"}


@pytest.mark.parametrize("field,value,message", [
    ("beam_size", 0, "beam_size must be between 1 and 100"),
    ("beam_size", 2.5, "beam_size must be an integer"),
    ("beam_size", True, "beam_size must be an integer"),
    ("max_tokens", 101, "max_tokens must be between 1 and 100"),
    ("num_iterations", -1, "num_iterations must be between 0 and 50"),
    ("top_k", 0, "top_k must be between 1 and 8192"),
    ("end_factor_from", -1, "end_factor_from must be between 0 and 100"),
    ("clip_temperature", 0.0, r"clip_temperature must be in \(0.0, 10.0\]"),
    ("fusion_factor", 1.5, r"fusion_factor must be in \[0.0, 1.0\]"),
    ("fusion_factor", math.nan, "fusion_factor must be a finite number"),
    ("end_factor", math.inf, "end_factor must be a finite number"),
    ("end_factor", -1.0, "end_factor must be in"),
    ("stepsize", "big", "stepsize must be a number"),
    ("forbidden_factor", 0, "forbidden_factor must be in"),
    ("repetition_penalty", 11.0, "repetition_penalty must be in"),
    ("grad_norm_factor", -0.1, "grad_norm_factor must be in"),
    ("ce_scale", -1.0, "ce_scale must be in"),
    ("clip_scale", 101.0, "clip_scale must be in"),
    ("end_token", "", "end_token must be a non-empty string"),
    ("cond_text", 3, "cond_text must be a string"),
])
def test_bad_values_say_what_is_allowed(field, value, message):
    with pytest.raises(ValueError, match=message):
        ZeroCapConfig().replace(**{field: value}).validate()


def test_beam_size_cannot_exceed_top_k():
    with pytest.raises(ValueError, match=r"beam_size \(9\) must not exceed top_k \(8\)"):
        ZeroCapConfig(beam_size=9, top_k=8).validate()


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'poem'; choose one of: caption, arithmetic, knowledge, ocr"):
        preset("poem")
