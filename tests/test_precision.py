"""The GPU's precisions (CLIP in fp16 as clip.load gives it on a GPU; the LM in bf16 on request),
run on the CPU: the dtype handling of the fast form, end to end."""
import math

import clip
import torch
from clip.model import convert_weights

from zerocap import ZeroCap, ZeroCapConfig
from zerocap.loading import load_models


def half_clip_engine(lm_dir, clip_file, lm_dtype="float32"):
    lm, tok, scorer, _ = load_models(lm_dir, clip_file, device="cpu", lm_dtype=lm_dtype)
    convert_weights(scorer.clip)  # what clip.load does on a GPU
    return ZeroCap(lm, tok, scorer.clip, scorer.preprocess, device="cpu")


def test_fp16_clip_defaults_to_the_fast_form_and_its_features_match_fp32(lm_dir, clip_file, engine):
    zc = half_clip_engine(lm_dir, clip_file)
    assert zc.scorer.dtype == torch.float16 and zc.form.name == "fast"
    ct = zc.scorer.candidates
    prefixes = [ct.prefix(t) for t in ("Image of a dog", "Image of a")]
    top = torch.randint(0, len(ct.strings), (2, 40), generator=torch.Generator().manual_seed(3))
    top[:, 0] = 82  # "s": continues the last word
    shared, suffix, eot = ct.rows(prefixes, top)
    rows = ct.pad([p.row for p in prefixes])
    half = zc.scorer.encode_candidates(zc.scorer.encode_prefix(rows), shared, suffix, eot)
    assert half.dtype == torch.float16
    for r, p in enumerate(prefixes):
        ref = engine.scorer.clip.encode_text(clip.tokenize([p.text + ct.strings[t] for t in top[r].tolist()]))
        ref = ref / ref.norm(dim=-1, keepdim=True)
        torch.testing.assert_close(half[r].float(), ref, rtol=0, atol=1e-2)


def test_fp16_clip_with_a_bf16_lm_captions_a_batch(lm_dir, clip_file, images):
    zc = half_clip_engine(lm_dir, clip_file, lm_dtype="bfloat16")
    assert next(zc.lm.parameters()).dtype == torch.bfloat16
    results = zc.caption(images[:2], config=ZeroCapConfig(top_k=32, beam_size=2, max_tokens=3))
    for r in results:
        assert len(r.beams) == 2 and r.caption.startswith("Image of a")
        assert all(b.text and math.isfinite(b.score) and math.isfinite(b.clip_score)
                   and math.isfinite(b.perplexity) for b in r.beams)
    arith = zc.arithmetic(images[:2], [1, -1], config=ZeroCapConfig(top_k=32, beam_size=2, max_tokens=2))
    assert all(math.isfinite(b.score) for b in arith.beams)
