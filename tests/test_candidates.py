"""CLIP token rows built from precomputed pieces equal clip.tokenize(prefix + token, truncate=True)."""
import random

import clip
import pytest
import torch


def full_rows(ct, prefixes, top):
    shared, suffix, eot = ct.rows(prefixes, top)
    out = []
    for r, p in enumerate(prefixes):
        out.append([p.row[: int(shared[r, k])] + suffix[r, k, : int(eot[r, k]) + 1].tolist()
                    for k in range(top.shape[1])])
    return out


def expected(text):
    ids = clip.tokenize(text, truncate=True)[0].tolist()
    return ids[: ids.index(49407) + 1]  # CLIP reads its features at the first EOT


PREFIXES = [
    "Image of a", "Image of a dog", "Image of a dog's", "Image of a dog.", "Image of x'", " preventVS", "",
    " ", "Image of a 3", "Image of text that says \"", "café au", "naïve", "&amp", "fish &", "a <b", "tab\there",
    "Image of a " + "long " * 90,  # longer than CLIP's 77 tokens: truncated
    "Image of a " + "word " * 72 + "dog",  # the last word straddles the cut
]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_rows_equal_clip_tokenize(engine, prefix):
    ct = engine.scorer.candidates
    rng = random.Random(hash(prefix) % 1000)
    special = [50256, 13, 82, 338, 220, 198, 11, 6, 1101, 447, 4210, 764, 290]  # EOS . s 's space \n , ' ...
    ids = special + [rng.randrange(len(ct.strings)) for _ in range(300)]
    top = torch.tensor([ids])
    got = full_rows(ct, [ct.prefix(prefix)], top)[0]
    for tok, row in zip(ids, got):
        assert row == expected(prefix + ct.strings[tok]), (prefix, ct.strings[tok])


def test_rows_for_several_beams_at_once(engine):
    ct = engine.scorer.candidates
    prefixes = [ct.prefix(p) for p in ("Image of a", "Image of a dog", "x'")]
    top = torch.randint(0, len(ct.strings), (3, 64), generator=torch.Generator().manual_seed(0))
    for p, rows, toks in zip(prefixes, full_rows(ct, prefixes, top), top.tolist()):
        assert rows == [expected(p.text + ct.strings[t]) for t in toks]


def test_every_lm_token_alone_after_a_prompt(engine):
    """All 50,257 GPT-2 tokens after a typical prefix, in chunks (covers every piece table row)."""
    ct = engine.scorer.candidates
    p = ct.prefix("Image of a red")
    n = len(ct.strings)
    for start in range(0, n, 4096):
        ids = list(range(start, min(n, start + 4096)))
        rows = full_rows(ct, [p], torch.tensor([ids]))[0]
        want = clip.tokenize([p.text + ct.strings[t] for t in ids], truncate=True)
        for row, w in zip(rows, want.tolist()):
            assert row == w[: w.index(49407) + 1]


def test_prefix_cached_features_match_encode_text(engine):
    """The fast path's CLIP features equal CLIP's own encode_text up to fp32 rounding."""
    ct, scorer = engine.scorer.candidates, engine.scorer
    texts = ("Image of a dog", "Image of a " + "long " * 80, "naïve café", "A " + "qzxv" * 12)  # a long last word
    prefixes = [ct.prefix(t) for t in texts]
    top = torch.randint(0, len(ct.strings), (4, 40), generator=torch.Generator().manual_seed(1))
    top[:, 0] = 82  # "s": continues the last word
    top[:, 1] = ct.strings.index("#" * 32)  # 31 CLIP pieces of its own
    shared, suffix, eot = ct.rows(prefixes, top)
    # "qzxv" * 12 + "s" keeps the word's leading pieces: they come from the prefix's keys and values
    assert int(shared[3, 0]) > 1 + prefixes[3].head_len
    prefix_rows = ct.pad([p.row for p in prefixes])
    cache = scorer.encode_prefix(prefix_rows)
    saved = scorer.chunk_tokens
    try:
        scorer.chunk_tokens = 7  # many packed passes, each of whole rows, some across two prefixes
        fast = scorer.encode_candidates(cache, shared, suffix, eot)
        # the prefixes' keys and values computed in the first of those passes
        fused_cache, fused = scorer.encode_with_prefix(prefix_rows, shared, suffix, eot)
        scorer.chunk_tokens = 1 << 20  # one pass (a GPU's choice at this size)
        one_pass = scorer.encode_candidates(cache, shared, suffix, eot)
        _, fused_one_pass = scorer.encode_with_prefix(prefix_rows, shared, suffix, eot)
    finally:
        scorer.chunk_tokens = saved
    for mine, theirs in zip(fused_cache.keys + fused_cache.values, cache.keys + cache.values):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    assert len(set(eot.flatten().tolist())) > 2  # rows of several lengths
    assert int(eot.max()) >= scorer.WINDOW  # and a row past the window: a pass of its own
    full = scorer.encode_full(prefix_rows, shared, suffix, eot)
    for r, p in enumerate(prefixes):
        ids = clip.tokenize([p.text + ct.strings[t] for t in top[r].tolist()], truncate=True)
        ref = engine.scorer.clip.encode_text(ids)
        ref = ref / ref.norm(dim=-1, keepdim=True)
        assert torch.equal(full[r], ref)  # bit for bit
        torch.testing.assert_close(fast[r], ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(one_pass[r], ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fused[r], ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fused_one_pass[r], ref, rtol=1e-4, atol=1e-5)


def test_features_are_reused_within_a_step(engine):
    """Only candidates unseen in the step are encoded; the rest come from earlier iterations."""
    from zerocap.scorer import StepFeatures

    ct, scorer = engine.scorer.candidates, engine.scorer
    prefixes = [ct.prefix(t) for t in ("Image of a dog", "Image of a")]
    prefix_rows = ct.pad([p.row for p in prefixes])
    cache = scorer.encode_prefix(prefix_rows)
    g = torch.Generator().manual_seed(2)
    first = torch.randperm(len(ct.strings), generator=g)[:60].view(2, 30)
    second = torch.cat([first[:, 10:], torch.randint(0, len(ct.strings), (2, 10), generator=g)], dim=1)
    second[:, -1] = 82  # "s": continues the last word
    seen = StepFeatures(2, len(ct.strings), "cpu")
    for top in (first, second):
        shared, suffix, eot = ct.rows(prefixes, top)
        new = seen.missing(top)
        partial = scorer.encode_candidates(cache, shared, suffix, eot, needed=new)
        assert torch.equal(partial[~new], torch.zeros_like(partial[~new]))
        feats = seen.update(top, new, partial)
        torch.testing.assert_close(feats, scorer.encode_candidates(cache, shared, suffix, eot), rtol=1e-4, atol=1e-5)
    assert new.tolist() == [(~torch.isin(second[r], first[r])).tolist() for r in range(2)]
    assert new[:, :20].sum() == 0 and seen.table.shape[0] == 60 + int(new.sum())


def test_the_tokenizers_bpe_gives_clips_pieces(engine):
    """candidates.bpe_ids runs CLIP's merges in the `tokenizers` library; on words made of CLIP's own
    pieces glued together (what a candidate continuing a word makes) and on random characters,
    its pieces are those of CLIP's Python bpe."""
    import string

    tok = engine.scorer.candidates.tok
    rng = random.Random(0)
    pieces = [w.replace("</w>", "") for w in tok.encoder if w.replace("</w>", "").isalpha()]
    words = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 4)))[:30] for _ in range(3000)]
    words += ["".join(rng.choice(string.ascii_lowercase + "'.,!-") for _ in range(rng.randint(1, 16)))
              for _ in range(2000)]
    for w in words:
        assert engine.scorer.candidates.bpe_ids(w) == [tok.encoder[p] for p in tok.bpe(w).split(" ")], w
    from zerocap.candidates import is_plain

    texts = [t for t in (" ".join(words[i:i + 3]) for i in range(0, 1200, 3)) if is_plain(t)]
    texts += ["", "  a  b ", "dog's.", "x", "Capital Letters", "a,b;c"]
    assert len(texts) > 200
    assert [engine.scorer.candidates.encode_plain(t) for t in texts] == [tok.encode(t) for t in texts]
