"""MAGIC search, written for the tests from the paper (Su et al. 2022, "Language Models Can See",
arXiv 2205.02655, section 3: magic search) and the behaviour their README and demo document -- not
from their code (yxuansu/MAGIC has no licence). The oracle of tests/test_magic.py.

At step t, with x_<t the text so far and V_k the LM's k most likely next tokens,

    x_t = argmax_{v in V_k} { (1 - alpha) p(v | x_<t)
                              - alpha max_{1<=j<=t-1} cos(h_v, h_{x_j})
                              + beta f(v | x_<t, I) }

    f(v | x_<t, I) = exp(CLIP(I, [x_<t : v])) / sum_{z in V_k} exp(CLIP(I, [x_<t : z]))

h the LM's last-layer representation (its last hidden state, read as the LM returns it with its
hidden states), x_<t including the start token, CLIP(I, x) the logit-scaled cosine of the image's
and the text's embeddings. As their demo runs it: the LM starts from its start-of-text token (no
prompt), CLIP reads the generated continuation alone (at most its last `clip_text_max_len`
tokens, decoded by the LM's tokenizer), decoding_len counts the start token, and the caption is
the tokens after the start up to the LM's end-of-text token, decoded, whitespace folded.

Written plainly: no key/value cache (every candidate's whole row runs through the LM), every
candidate's text tokenized and encoded by CLIP from scratch.
"""
from __future__ import annotations

import torch


def hf_clip_text(model, tokenizer, padding="longest"):
    """A Hugging Face CLIP's text features of texts (as their CLIP wrapper: padded, truncated).
    padding "max_length": a SigLIP's, read as it was trained (padded to its whole context)."""
    def features(texts):
        enc = tokenizer(list(texts), padding=padding, truncation=True, max_length=model.config.text_config
                        .max_position_embeddings, return_tensors="pt")
        out = model.get_text_features(**enc)
        return out if isinstance(out, torch.Tensor) else out.pooler_output
    return features


def openai_clip_text(model):
    """An OpenAI CLIP's text features of texts (clip.tokenize, truncated)."""
    import clip

    def features(texts):
        return model.encode_text(clip.tokenize(list(texts), truncate=True))
    return features


class ReferenceMagic:
    def __init__(self, lm, tokenizer, text_features, logit_scale: float, start_id: int, end_id: int, k: int = 45,
                 alpha: float = 0.1, beta: float = 2.0, decoding_len: int = 16, clip_text_max_len: int = 60):
        self.lm, self.tok, self.text_features = lm, tokenizer, text_features
        self.logit_scale, self.start_id, self.end_id = logit_scale, start_id, end_id
        self.k, self.alpha, self.beta = k, alpha, beta
        self.decoding_len, self.clip_text_max_len = decoding_len, clip_text_max_len

    @torch.no_grad()
    def last(self, rows: list[list[int]]):
        """(next-token logits, last hidden states) at the last position of rows of one length."""
        out = self.lm(torch.tensor(rows), output_hidden_states=True)
        return out.logits[:, -1].float(), out.hidden_states[-1][:, -1].float()

    @torch.no_grad()
    def run(self, image_embedding: torch.Tensor, prompt: list[int] | None = None) -> str:
        ids = [self.start_id] + list(prompt or [])
        prefix_len = len(ids)
        image = image_embedding.float() / image_embedding.float().norm()
        out = self.lm(torch.tensor([ids]), output_hidden_states=True)
        context = list(out.hidden_states[-1][0].float())  # h of every token so far
        logits = out.logits[0, -1].float()
        for _ in range(self.decoding_len - prefix_len):
            probs = torch.softmax(logits, dim=-1)
            top = torch.topk(logits, self.k).indices.tolist()
            rows_logits, h = self.last([ids + [v] for v in top])
            hs = torch.stack(context)
            penalty = torch.stack([torch.cosine_similarity(h[i][None], hs, dim=-1).max() for i in range(len(top))])
            texts = [self.tok.decode((ids[prefix_len:] + [v])[-self.clip_text_max_len:]) for v in top]
            text = self.text_features(texts).float()
            text = text / text.norm(dim=-1, keepdim=True)
            f = torch.softmax(self.logit_scale * (text @ image), dim=0)
            score = (1 - self.alpha) * probs[top] - self.alpha * penalty + self.beta * f
            best = int(score.argmax())
            ids.append(top[best])
            context.append(h[best])
            logits = rows_logits[best]
        return self.caption(ids)

    def caption(self, ids: list[int]) -> str:
        return their_parse(self.tok, ids, self.start_id, self.end_id)


def their_parse(tokenizer, ids: list[int], start_id: int, end_id: int) -> str:
    """Their caption of generated ids: after the start token, start tokens skipped, up to the first
    end token, decoded, whitespace folded."""
    kept = []
    for t in ids[1:]:
        if t == end_id:
            break
        if t != start_id:
            kept.append(t)
    return " ".join(tokenizer.decode(kept).split())
