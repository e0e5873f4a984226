"""Tokenizers of every kind, as the decoders read them (zerocap/vocabulary.py).

Byte-fallback SentencePiece vocabularies -- Llama 2, TinyLlama, Mistral, Gemma, Phi-3 -- hold the
256 byte pieces <0x00> ... <0xFF> before their pieces, and "<0x2E>" decodes to "." too. The end
token is the tokenizer's own "." (what it gives for "a."), never that byte piece: a beam ends where
the LM writes ".", and ZeroCap's end_factor boosts the token an LM writes (issue 39, item 11)."""
import copy

import pytest
import torch

from numeric import assert_same_beams
from reference_decoder import ReferenceDecoder
from reference_pseudo_tokens import CLIPTextGenerator, reference_args
from tiny_models import LM_FAMILIES, write_tiny_lm
from zerocap import ZeroCap, ZeroCapConfig
from zerocap.modes import Target
from zerocap.pseudo_tokens import PseudoTokenConfig

SENTENCEPIECE = [name for name, (_, _, kind) in LM_FAMILIES.items() if kind == "sp"]


@pytest.fixture(scope="module")
def byte_lms(tmp_path_factory):
    root = tmp_path_factory.mktemp("byte-fallback")
    return {name: write_tiny_lm(str(root / name), name, byte_fallback=True) for name in SENTENCEPIECE}


@pytest.fixture(scope="module")
def dot_llama(byte_lms, tmp_path_factory):
    """The byte-fallback Llama made to write ".": every residual stream carries +10 on its first
    channel (embeddings set there, no layer writes it), and only the "." row of the output layer
    reads that channel -- "." is the top token at every step, by a wide margin."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(tmp_path_factory.mktemp("dot") / "llama")
    model = AutoModelForCausalLM.from_pretrained(byte_lms["llama"])
    tok = AutoTokenizer.from_pretrained(byte_lms["llama"])
    dot = tok.convert_tokens_to_ids(".")
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 10.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0] = 0.0
            layer.mlp.down_proj.weight[0] = 0.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[dot, 0] = 3.0
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("name", SENTENCEPIECE)
def test_the_end_token_is_the_tokenizers_own_dot_not_its_byte_piece(byte_lms, clip_file, name):
    engine = ZeroCap.load(byte_lms[name], clip_file, device="cpu")
    tok = engine.tokenizer
    dot, byte = tok.convert_tokens_to_ids("."), tok.convert_tokens_to_ids("<0x2E>")
    assert byte < dot and tok.decode([byte]) == "."  # the trap is there: a byte piece that reads "." comes first
    assert engine.vocabulary.end_id(".") == dot == tok.encode("a.", add_special_tokens=False)[-1]
    assert engine.vocabulary.end_id("!") == tok.convert_tokens_to_ids("!")


@pytest.mark.parametrize("form", ["exact", "fast"])
def test_a_beam_ends_where_the_lm_writes_its_dot(dot_llama, clip_file, images, form):
    """The literal reference, given the real ".", ends its beams there; so do both forms."""
    engine = ZeroCap.load(dot_llama, clip_file, device="cpu", form=form)
    tok = engine.tokenizer
    cfg = ZeroCapConfig(top_k=16, beam_size=2, max_tokens=4, num_iterations=1)
    result = engine.caption([images[0]], config=cfg)[0]
    ref = ReferenceDecoder(engine.lm, tok, engine.scorer.clip, engine.forbidden.nonzero()[:, 0].tolist(), cfg,
                           bos_prefix=engine.facts.bos, end_id=tok.convert_tokens_to_ids("."), candidate_text="row")
    expected = ref.run(engine.targets.image_target(images[0])[None], cfg.cond_text)
    assert_same_beams(result, expected)
    assert all(b.text.endswith(".") and b.text.count(".") == 1 for b in result.beams)  # not "...." of byte pieces


def test_pseudo_token_sentences_end_at_the_lms_dot(dot_llama, clip_file, images):
    engine = ZeroCap.load(dot_llama, clip_file, device="cpu")
    tok = engine.tokenizer
    cfg = PseudoTokenConfig(seed=3, sentence_iterations=2, max_tokens=4, sampling_top_k=1, beam_size=2)
    target = engine.targets.image_target(images[1])
    r = engine.pseudo_tokens.decode([Target(target, "img")], cfg)[0]
    gen = CLIPTextGenerator(engine.lm, copy.deepcopy(tok), engine.scorer.clip, **reference_args(cfg),
                            end_id=tok.convert_tokens_to_ids("."), candidate_text="row", spacer="\u2581")
    by_clip, by_mixed, sentences, beams = gen.generate(target[None])
    assert ([s.text for s in r.sentences], r.best_clip, r.best_mixed, [b.text for b in r.beams]) == \
        (sentences, by_clip[0], by_mixed[0], beams)
    assert all(s.endswith(".") for s in sentences)


def test_pseudo_tokens_without_bos_or_eos_are_refused_in_one_line(tmp_path, clip_file, images):
    """A tokenizer with neither BOS nor EOS: ZeroCap runs (its prompt needs neither); the pseudo-token
    method, whose sentences start from one of them, is refused in words (issue 39, item 12)."""
    from transformers import AutoTokenizer

    from zerocap import InputError

    lm = write_tiny_lm(str(tmp_path / "qwen2"), "qwen2")
    tok = AutoTokenizer.from_pretrained(lm)
    tok.eos_token = None
    tok.save_pretrained(lm)
    engine = ZeroCap.load(lm, clip_file, device="cpu")
    assert engine.tokenizer.bos_token_id is None and engine.tokenizer.eos_token_id is None
    assert engine.caption([images[0]], max_tokens=1, beam_size=1, top_k=8)[0].beams
    with pytest.raises(InputError, match="starts its sentences from the LM's BOS token .* this tokenizer has neither"):
        engine.caption([images[0]], method="pseudo-tokens", max_tokens=2)
