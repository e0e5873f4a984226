"""The two forms of the same algorithm, chosen once: which LM adapter, which CLIP guide, how many
images decode together. Everything else receives the `Form`; nothing else asks which it is.

  fast   (the default, on every device) each row's LM past kept in a KV cache from step to step,
         one-token passes only (GPT-2's and Llama's written-out steps); each beam's CLIP prefix encoded once
         per step and only the candidates' suffix tokens run, a candidate's features kept for
         the step; every request of a batch in one pass.
  exact  the authors' operation order: the LM cache from its own pass, the generic forward,
         CLIP's own encode_text on full 77-token rows, one request at a time (batching changes
         matrix shapes, hence rounding). In fp32 its scores equal a literal transcription of
         their code's to the last bit where both run the same kernels (seen with AVX-512).
Both give the same beams on every case compared (README); they differ in rounding and speed.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError
from .lazy import resolve


@dataclass(frozen=True)
class Form:
    name: str
    help: str
    exact_lm: bool  # the LM adapter: the authors' two passes and generic forward
    exact_guide: bool  # the guide: CLIP's own encode_text on full rows
    max_images: int | None  # images decoded together at most (None: as many as given)
    prunes: bool = False  # work a bound shows cannot change the output is skipped (MAGIC: candidates that cannot win)

    def lm(self, model, family):
        """The LM adapter of this form for `model` of `family` (lm.py, resolved on first use: lazy.py)."""
        if self.exact_lm:
            return resolve("zerocap.lm:ExactLM")(model)
        return resolve("zerocap.lm:FastLM")(model, family.fast_step(model))

    def rows_forward(self, model, family):
        """The LM's pass over whole rows after a learned prefix (the pseudo-token method's): the
        family's written-out pass in the fast form where it has one, else None (the LM's own
        forward, as the authors run it)."""
        return None if self.exact_lm else family.rows_forward(model)

    def shares_prefixes(self, scorer) -> bool:
        """Whether `candidates` reads each prefix once for all its candidates (the fast form's, where
        the scorer's text tower allows it), so a candidate's text is the prefix's and its own."""
        return not self.exact_guide and getattr(scorer, "shares_prefixes", False)

    def candidates(self, scorer, prefix_texts: list[str], eager: bool = False):
        """The scorer's candidate features for one decoding step, in this form's way (`eager`: never
        the compiled fixed-size buffers)."""
        if self.exact_guide:
            return scorer.exact_candidates(prefix_texts)
        return scorer.fast_candidates(prefix_texts, eager=eager)


FAST = Form("fast", "LM keys/values kept across steps, CLIP prefix keys/values reused, images in one batch (default)",
            exact_lm=False, exact_guide=False, max_images=None, prunes=True)
EXACT = Form("exact", "the authors' operation order, one image at a time: their scores to the last bit where the"
             " kernels match, ~30x slower on a CPU", exact_lm=True, exact_guide=True, max_images=1)
FORMS = {f.name: f for f in (FAST, EXACT)}


def get(form: "str | Form") -> Form:
    if isinstance(form, Form):
        return form
    if form not in FORMS:
        raise InputError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")
    return FORMS[form]
