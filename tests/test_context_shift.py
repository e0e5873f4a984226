"""The fast form's GPT-2 step equals the generic Hugging Face forward over the same cache."""
import torch

from zerocap.context_shift import CachedLM


def cache_and_last(lm, rows=3, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    context = torch.randint(0, lm.config.vocab_size, (rows, length), generator=g)
    _, past = CachedLM(lm).prefill(context)
    return past, context[:, -1:]


def test_gpt2_step_matches_the_generic_forward_with_gradients(engine):
    lm = CachedLM(engine.lm)
    assert lm.has_fused_step
    past, last = cache_and_last(engine.lm)
    grads = []
    for fast in (False, True):
        delta = (torch.randn(past.shape, generator=torch.Generator().manual_seed(1)) * 0.1).requires_grad_(True)
        logits = lm.next_logits(last, past + delta, fast=fast)
        (g,) = torch.autograd.grad(torch.softmax(logits, -1)[:, :100].pow(2).sum(), delta)
        grads.append((logits.detach(), g))
    (slow_logits, slow_grad), (fast_logits, fast_grad) = grads
    assert fast_logits.shape == (3, engine.vocab_size)
    torch.testing.assert_close(fast_logits, slow_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_grad, slow_grad, rtol=1e-4, atol=1e-7)


def test_other_models_keep_the_generic_forward(tmp_path):
    from transformers import AutoModelForCausalLM

    from tiny_models import write_tiny_gpt_neo

    neo = AutoModelForCausalLM.from_pretrained(write_tiny_gpt_neo(str(tmp_path / "neo")))
    assert not CachedLM(neo).has_fused_step
    past, last = cache_and_last(neo)
    torch.testing.assert_close(CachedLM(neo).next_logits(last, past, fast=True), CachedLM(neo).next_logits(last, past))
