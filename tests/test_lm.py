"""The LM adapters: GPT-2's written-out step equals the generic Hugging Face forward over the same cache."""
import torch

from zerocap.families import GPT2, GPT_NEO, family_of
from zerocap.lm import ExactLM, FastLM


def cache_and_last(lm, rows=3, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    context = torch.randint(0, lm.config.vocab_size, (rows, length), generator=g)
    _, past = FastLM(lm).prefill(context)
    return past, context[:, -1:]


def test_gpt2_step_matches_the_generic_forward_with_gradients(engine):
    assert family_of(engine.lm.config) is GPT2
    fast, generic = FastLM(engine.lm, GPT2.fast_step(engine.lm)), ExactLM(engine.lm)
    assert fast.step is not None and generic.step is None
    past, last = cache_and_last(engine.lm)
    grads = []
    for lm in (generic, fast):
        delta = (torch.randn(past.shape, generator=torch.Generator().manual_seed(1)) * 0.1).requires_grad_(True)
        logits = lm.next_logits(last, past + delta)
        (g,) = torch.autograd.grad(torch.softmax(logits, -1)[:, :100].pow(2).sum(), delta)
        grads.append((logits.detach(), g))
    (slow_logits, slow_grad), (fast_logits, fast_grad) = grads
    assert fast_logits.shape == (3, engine.vocab_size)
    torch.testing.assert_close(fast_logits, slow_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_grad, slow_grad, rtol=1e-4, atol=1e-7)


def test_exact_prefill_takes_the_cache_from_its_own_pass(engine):
    """The authors' order: the cache of context[:-1] from a pass over context[:-1]; the fast form
    slices it from the pass over the whole context. Causal attention makes them equal up to rounding."""
    context = torch.randint(0, engine.vocab_size, (2, 6), generator=torch.Generator().manual_seed(4))
    p_fast, fast = FastLM(engine.lm).prefill(context)
    p_exact, exact = ExactLM(engine.lm).prefill(context)
    assert fast.shape == exact.shape == (2, 2, 2, 4, 5, 16)  # (layers, k/v, rows, heads, T-1, head_dim)
    torch.testing.assert_close(fast, exact, rtol=1e-5, atol=1e-5)  # O(1) values, GEMMs of other shapes
    torch.testing.assert_close(p_fast, p_exact)
    assert FastLM(engine.lm).prefill(context[:, :1])[1] is None  # one token: nothing to cache


def test_other_models_keep_the_generic_forward(tmp_path):
    from transformers import AutoModelForCausalLM

    from tiny_models import write_tiny_gpt_neo

    neo = AutoModelForCausalLM.from_pretrained(write_tiny_gpt_neo(str(tmp_path / "neo")))
    assert family_of(neo.config) is GPT_NEO and GPT_NEO.fast_step(neo) is None
    past, last = cache_and_last(neo)
    out = FastLM(neo).next_logits(last, past)
    assert out.shape == (3, neo.config.vocab_size) and out.dtype == torch.float32
