"""A literal reference decoder: a plain transcription of the authors' ZeroCLIP.py algorithm.

No optimisation on purpose: one beam at a time, candidate texts decoded and tokenized with
`clip.tokenize`, CLIP's own `encode_text` on 77 tokens, gradients per beam and per layer.
It is the oracle every optimisation in `zerocap` is compared with. The only changes from the
authors' code are the issue's listed deviations (truncated CLIP texts, no unused min-max
weights, no clean_up_tokenization_spaces) and the current transformers cache API.

Generalised to other LMs in its tokenizer calls only (issue 32), each the authors' own on GPT-2:
the prompt is BOS's id and the text's ids (theirs: `encode(bos + text)`, the same ids on GPT-2);
the end token's id may be given (a SentencePiece vocabulary encodes "." alone as "▁", ".");
another CLIP's text features may be given (`text_features`: a Hugging Face folder's own);
and `candidate_text="row"` decodes a candidate with its row, and a beam's text as what it adds
after the prompt -- a SentencePiece token's text depends on its neighbours -- where theirs
(`"token"`) decodes the token alone.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache


def _decode(tokenizer, ids):
    return tokenizer.decode(ids, clean_up_tokenization_spaces=False)


def _lm(lm, ids, cache=None):
    if cache is None:  # every layer's keys and values at every position (a sliding-window layer's too)
        cache = DynamicCache()
    try:
        return lm(ids, cache=cache, use_cache=True)
    except TypeError:
        return lm(ids, past_key_values=cache, use_cache=True)


def _cache_of(out):
    return getattr(out, "cache", None) or out.past_key_values


def _as_cache(layers):
    return DynamicCache(ddp_cache_data=[(k, v) for k, v in layers])


class ReferenceDecoder:
    def __init__(self, lm, tokenizer, clip_model, forbidden_ids, cfg, device="cpu", bos_prefix=True, end_id=None,
                 candidate_text="token", text_features=None):
        import clip

        self.clip_tokenize = clip.tokenize
        self.lm, self.tokenizer, self.clip, self.cfg = lm, tokenizer, clip_model, cfg
        self.device = device
        self.forbidden_tokens = list(forbidden_ids)
        self.bos_prefix = bos_prefix and tokenizer.bos_token_id is not None
        self.bos_text = tokenizer.bos_token or ""
        self.end_token = tokenizer.encode(cfg.end_token, add_special_tokens=False)[0] if end_id is None else end_id
        self.by_row = candidate_text == "row"
        self.text_features = text_features  # another CLIP's own (a Hugging Face folder's): texts -> features

    # ---- CLIP --------------------------------------------------------------------------------
    def get_txt_features(self, texts):
        with torch.no_grad():
            if self.text_features is not None:
                f = self.text_features(texts)
            else:
                f = self.clip.encode_text(self.clip_tokenize(texts, truncate=True).to(self.device))
            f = f / f.norm(dim=-1, keepdim=True)
        return f.detach()

    def clip_loss(self, probs, context_tokens):
        top_size = self.cfg.top_k
        _, top_indices = probs.topk(top_size, -1)
        prefix_texts = [_decode(self.tokenizer, x.tolist()).replace(self.bos_text, "") if self.bos_text
                        else _decode(self.tokenizer, x.tolist()) for x in context_tokens]
        clip_loss = 0
        for idx_p in range(probs.shape[0]):
            top_texts = []
            prefix_text = prefix_texts[idx_p]
            for x in top_indices[idx_p]:
                if self.by_row:  # what the token adds to its row
                    row = context_tokens[idx_p].tolist()
                    top_texts.append(prefix_text + _decode(self.tokenizer, row + [int(x)])[len(_decode(self.tokenizer, row)):])
                else:
                    top_texts.append(prefix_text + _decode(self.tokenizer, [int(x)]))
            text_features = self.get_txt_features(top_texts)
            with torch.no_grad():
                similarities = self.image_features @ text_features.T
                target_probs = nn.functional.softmax(similarities / self.cfg.clip_temperature, dim=-1).detach()
                target_probs = target_probs.type(torch.float32)
            target = torch.zeros_like(probs[idx_p])
            target[top_indices[idx_p]] = target_probs[0]
            target = target.unsqueeze(0)
            clip_loss = clip_loss + torch.sum(-(target * torch.log(probs[idx_p:(idx_p + 1)])))
        return clip_loss

    # ---- LM ------------------------------------------------------------------------------------
    def shift_context(self, context, last_token, context_tokens, probs_before_shift):
        cfg = self.cfg
        context_delta = [tuple(torch.zeros_like(x) for x in p) for p in context]
        for _ in range(cfg.num_iterations):
            curr_shift = [tuple(x.clone().requires_grad_(True) for x in p) for p in context_delta]
            shifted = [(k + dk, v + dv) for (k, v), (dk, dv) in zip(context, curr_shift)]
            out = _lm(self.lm, last_token, _as_cache(shifted))
            probs = nn.functional.softmax(out.logits[:, -1, :].float(), dim=-1)
            loss = 0.0
            loss += cfg.clip_scale * self.clip_loss(probs, context_tokens)
            ce_loss = cfg.ce_scale * ((probs * probs.log()) - (probs * probs_before_shift.log())).sum(-1)
            loss += ce_loss.sum()
            loss.backward()
            new_delta = []
            for (dk, dv), (sk, sv) in zip(context_delta, curr_shift):
                pair = []
                for d, s in ((dk, sk), (dv, sv)):
                    rows = []
                    for b in range(context_tokens.shape[0]):
                        g = s.grad[b:b + 1]
                        norm = torch.norm(g) + 1e-15
                        rows.append(-cfg.stepsize * (g / norm ** cfg.grad_norm_factor))
                    pair.append(torch.cat(rows, dim=0) + d)
                new_delta.append(tuple(x.detach() for x in pair))
            context_delta = new_delta
        return [((k + dk).detach(), (v + dv).detach()) for (k, v), (dk, dv) in zip(context, context_delta)]

    def update_special_tokens_logits(self, context_tokens, i, logits):
        cfg = self.cfg
        for beam_id in range(context_tokens.shape[0]):
            for token_idx in set(context_tokens[beam_id][-4:].tolist()):
                factor = cfg.repetition_penalty if logits[beam_id, token_idx] > 0 else (1 / cfg.repetition_penalty)
                logits[beam_id, token_idx] /= factor
            if i >= cfg.end_factor_from:
                factor = cfg.end_factor if logits[beam_id, self.end_token] > 0 else (1 / cfg.end_factor)
                logits[beam_id, self.end_token] *= factor
            if i == 0:
                start_factor = cfg.start_end_penalty
                factor = start_factor if logits[beam_id, self.end_token] > 0 else (1 / start_factor)
                logits[beam_id, self.end_token] /= factor
            for token_idx in self.forbidden_tokens:
                factor = cfg.forbidden_factor if logits[beam_id, token_idx] > 0 else (1 / cfg.forbidden_factor)
                logits[beam_id, token_idx] /= factor
        return logits

    def get_next_probs(self, i, context_tokens):
        last_token = context_tokens[:, -1:]
        context = None
        if context_tokens.size(1) > 1:
            cache = _cache_of(_lm(self.lm, context_tokens[:, :-1]))
            context = [(layer.keys, layer.values) for layer in cache.layers]
        logits_before_shift = self.lm(context_tokens).logits[:, -1, :].float()
        probs_before_shift = nn.functional.softmax(logits_before_shift, dim=-1)
        if context is not None and self.cfg.num_iterations > 0:
            context = self.shift_context(context, last_token, context_tokens, probs_before_shift)
        with torch.no_grad():
            out = _lm(self.lm, last_token, _as_cache(context) if context is not None else None)
        logits = out.logits[:, -1, :].float()
        logits = self.update_special_tokens_logits(context_tokens, i, logits)
        probs = nn.functional.softmax(logits, dim=-1)
        probs = (probs ** self.cfg.fusion_factor) * (probs_before_shift ** (1 - self.cfg.fusion_factor))
        return probs / probs.sum()

    # ---- beam search ---------------------------------------------------------------------------
    def run(self, image_features, cond_text):
        """image_features: (1, D) normalised. Returns the beams' texts, best first, and scores."""
        self.image_features = image_features
        beam_size = self.cfg.beam_size
        prompt = [self.tokenizer.bos_token_id] if self.bos_prefix else []
        prompt += self.tokenizer.encode(cond_text, add_special_tokens=False)
        context_tokens = prompt
        context_tokens = torch.tensor(context_tokens, device=self.device, dtype=torch.long).unsqueeze(0)
        gen_tokens = None
        scores = None
        seq_lengths = torch.ones(beam_size, device=self.device)
        is_stopped = torch.zeros(beam_size, device=self.device, dtype=torch.bool)
        for i in range(self.cfg.max_tokens):
            probs = self.get_next_probs(i, context_tokens)
            logits = probs.log()
            if scores is None:
                scores, next_tokens = logits.topk(beam_size, -1)
                context_tokens = context_tokens.expand(beam_size, *context_tokens.shape[1:])
                next_tokens, scores = next_tokens.permute(1, 0), scores.squeeze(0)
                gen_tokens = next_tokens
            else:
                logits[is_stopped] = -float("inf")
                logits[is_stopped, 0] = 0
                scores_sum = scores[:, None] + logits
                seq_lengths[~is_stopped] += 1
                scores_sum_average = scores_sum / seq_lengths[:, None]
                scores_sum_average, next_tokens = scores_sum_average.view(-1).topk(beam_size, -1)
                next_tokens_source = next_tokens // scores_sum.shape[1]
                seq_lengths = seq_lengths[next_tokens_source]
                next_tokens = next_tokens % scores_sum.shape[1]
                next_tokens = next_tokens.unsqueeze(1)
                gen_tokens = gen_tokens[next_tokens_source]
                gen_tokens = torch.cat((gen_tokens, next_tokens), dim=-1)
                context_tokens = context_tokens[next_tokens_source]
                scores = scores_sum_average * seq_lengths
                is_stopped = is_stopped[next_tokens_source]
            context_tokens = torch.cat((context_tokens, next_tokens), dim=1)
            is_stopped = is_stopped + next_tokens.eq(self.end_token).view(-1)
            if is_stopped.all():
                break
        scores = scores / seq_lengths
        if self.by_row:
            head = _decode(self.tokenizer, prompt)
            texts = [_decode(self.tokenizer, prompt + out[: int(n)].tolist())[len(head):]
                     for out, n in zip(gen_tokens, seq_lengths)]
        else:
            texts = [_decode(self.tokenizer, out[: int(n)].tolist()) for out, n in zip(gen_tokens, seq_lengths)]
        order = scores.argsort(descending=True)
        return [texts[i] for i in order], [float(scores[i]) for i in order]
