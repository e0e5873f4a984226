"""Extending zerocap (README, "Extending"): a new input mode, LM family or scorer is one entry or
one class, and every interface takes it with no edit elsewhere."""
import asyncio
import json
import os
import sys

import pytest
import torch

from numeric import assert_same_beams
from reference_decoder import ReferenceDecoder
from zerocap import ZeroCap, ZeroCapConfig, families, modes
from zerocap.cli import main
from zerocap.scorer import TextScorer

FAST = ["--top-k", "16", "--beam-size", "2", "--max-tokens", "2", "--device", "cpu"]
SMALL = dict(top_k=24, beam_size=2, max_tokens=3)


@pytest.fixture
def sketch_mode():
    """A toy mode: images, captioned as sketches."""
    mode = modes.register(modes.Mode("sketch", "describe it as a drawing", {"cond_text": "A sketch of",
                                                                            "end_factor": 1.2}, modes.IMAGE))
    yield mode
    modes.unregister("sketch")


def test_a_new_mode_is_a_command_and_a_container_mode(sketch_mode, capsys, images, lm_dir, clip_file, weights_root,
                                                      monkeypatch):
    code = main(["sketch", images[0], "--lm", lm_dir, "--clip", clip_file, *FAST, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    record = json.loads(out.out)
    assert record["cond_text"] == "A sketch of" and record["best_mixed"].startswith("A sketch of")
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out
    assert "sketch" in listing and "describe it as a drawing" in listing  # among the commands
    with pytest.raises(SystemExit):
        main(["sketch", "--help"])
    assert "describe it as a drawing" in capsys.readouterr().out  # its own command, with its help

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import predict
    from test_predictor import sent

    monkeypatch.setenv("ZEROCAP_WEIGHTS", weights_root)
    monkeypatch.setenv("ZEROCAP_OFFLINE", "1")
    monkeypatch.setenv("ZEROCAP_DEVICE", "cpu")
    p = predict.Predictor()
    p.setup()
    try:
        out = asyncio.run(p.run(mode="sketch", image=sent(images[0]), beam_size=2, max_tokens=2, top_k=16))
        assert out.mode == "sketch" and out.cond_text == "A sketch of" and out.caption.startswith("A sketch of")
        with pytest.raises(Exception, match="mode sketch takes `image`, not `texts`"):
            asyncio.run(p.run(mode="sketch", image=sent(images[0]), texts=["x"], beam_size=2, max_tokens=2, top_k=16))
    finally:
        p.scheduler.close()


@pytest.fixture
def opt_family():
    """A toy family entry: OPT, through the generic forward."""
    family = families.Family("opt", ("opt",), bos_prefix=True, flag="opt", folder="opt-125m", repo="facebook/opt-125m")
    families.FAMILIES.append(family)
    yield family
    families.FAMILIES.remove(family)


def write_tiny_opt(path):
    from transformers import GPT2Tokenizer, OPTConfig, OPTForCausalLM

    from tiny_models import FIXTURES

    torch.manual_seed(5)
    cfg = OPTConfig(vocab_size=50257, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                    max_position_embeddings=128, word_embed_proj_dim=64, init_std=0.2, bos_token_id=50256,
                    eos_token_id=50256, pad_token_id=1)
    OPTForCausalLM(cfg).save_pretrained(path)
    GPT2Tokenizer(os.path.join(FIXTURES, "vocab.json"), os.path.join(FIXTURES, "merges.txt")).save_pretrained(path)
    return path


def test_a_new_lm_family_is_one_entry(opt_family, tmp_path, clip_file, images, capsys, monkeypatch, weights_root):
    from zerocap import weights
    from zerocap.cli import build_parser

    engine = ZeroCap.load(write_tiny_opt(str(tmp_path / "opt")), clip_file, device="cpu")
    assert engine.family is opt_family and engine.prompt_prefix == engine.tokenizer.bos_token
    cfg = ZeroCapConfig(**SMALL)
    result = engine.caption([images[0]], config=cfg)[0]
    ref = ReferenceDecoder(engine.lm, engine.tokenizer, engine.scorer.clip, engine.forbidden.nonzero()[:, 0].tolist(),
                           cfg).run(engine.targets.image_target(images[0])[None], cfg.cond_text)
    assert [b.text for b in result.beams] == ref[0]  # the reference's beams, through the generic forward
    # the command line's --lm_model and the weights folder know it
    assert build_parser().parse_args(["caption", "x.png", "--lm_model", "opt"]).lm_model == "opt"
    assert weights.lms()["opt-125m"] == "facebook/opt-125m"
    monkeypatch.setenv("ZEROCAP_WEIGHTS", weights_root)
    monkeypatch.setenv("ZEROCAP_OFFLINE", "1")
    assert main(["caption", images[0], "--lm_model", "opt", *FAST]) == 2
    assert "opt-125m" in capsys.readouterr().err  # its folder, named in the offline message


class StringCLIP(TextScorer):
    """A toy scorer that knows only texts and images: the tiny CLIP through clip.tokenize, with
    candidates scored from their decoded texts (the authors' way; no CLIP-specific shortcut)."""

    def __init__(self, clip_model, preprocess):
        import clip

        self.model, self.preprocess, self.tokenize = clip_model, preprocess, clip.tokenize

    def prepared_features(self, prepared):
        return self.model.encode_image(torch.stack(prepared))

    def prepare_image(self, image):
        return self.preprocess(image)

    def text_features(self, texts):
        return self.model.encode_text(self.tokenize(texts, truncate=True))


@pytest.mark.numeric
def test_a_new_scorer_is_one_class(engine, images):
    scorer = StringCLIP(engine.scorer.clip, engine.scorer.preprocess)
    zc = ZeroCap(engine.lm, engine.tokenizer, scorer, device="cpu")
    cfg = ZeroCapConfig(**SMALL)
    result = zc.caption([images[1]], config=cfg)[0]
    ref = ReferenceDecoder(engine.lm, engine.tokenizer, engine.scorer.clip, engine.forbidden.nonzero()[:, 0].tolist(),
                           cfg).run(zc.targets.image_target(images[1])[None], cfg.cond_text)
    assert_same_beams(result, ref)


@pytest.mark.numeric
def test_a_new_form_is_one_object(engine, images):
    """A toy form: the fast form's LM adapter (KV cache, one-token passes) with CLIP's own
    encode_text on full rows, two images at a time. The engine takes it as it is, and it gives
    the reference decoder's beams, since a form changes only the operation order."""
    from zerocap.forms import Form

    toy = Form("cached-lm-full-clip", "toy: the KV cache with CLIP's full rows", exact_lm=False, exact_guide=True,
               max_images=2)
    zc = ZeroCap(engine.lm, engine.tokenizer, engine.scorer, device="cpu", form=toy)
    cfg = ZeroCapConfig(**SMALL)
    results = zc.caption(images[:3], config=cfg)
    assert zc.form is toy and len(results) == 3
    for image, result in zip(images[:3], results):
        ref = ReferenceDecoder(engine.lm, engine.tokenizer, engine.scorer.clip, engine.forbidden.nonzero()[:, 0].tolist(),
                               cfg).run(zc.targets.image_target(image)[None], cfg.cond_text)
        assert_same_beams(result, ref)
