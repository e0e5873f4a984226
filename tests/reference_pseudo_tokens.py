"""A literal reference of the pseudo-token method: a plain transcription of the authors'
model/CapGenerator.py (YoadTew/zero-shot-video-to-text), `CLIPTextGenerator.generate` and what
it calls, and run.py's `filter_video`. It is the oracle zerocap/pseudo_tokens.py is compared with.

Changes from their code, each forced by today's libraries or by passing models in:
  - the models are passed in (their code loads gpt2-medium and ViT-B/32 by name);
  - `transformers.generation_logits_process` is `transformers.generation.logits_process`;
  - the pseudo-tokens' start is the LM's cache of `num_dummy_tokens` BOS ids: their
    `tokenizer.encode([bos] * n)` gave those ids with the transformers of their day, today it
    gives a list of lists;
  - the LM's past is passed as a `DynamicCache` (today's transformers take no tuples), the
    pseudo-tokens' start taken with one of every position in every layer (a sliding-window
    layer would keep only its window);
  - the vocabulary's pieces come from `convert_ids_to_tokens` (their `tokenizer.decoder`);
  - `clip.tokenize(..., truncate=True)`: texts past CLIP's 77 tokens are cut (theirs raise);
  - the device is passed in (theirs: CUDA when there is one; `torch.multinomial` draws from that
    device's generator, as ours does).
Generalised to other LMs in its tokenizer calls only (issue 32), each the authors' own on GPT-2:
  - prompts are the start token's id and the text's ids (theirs: `encode(bos + text)`, the same
    ids on GPT-2); `start_id` (default BOS) also fills the pseudo-tokens, for a family without a
    BOS (Qwen: its end-of-text token, as GPT-2's BOS is);
  - `end_id` may be given (a SentencePiece vocabulary encodes "." alone as "▁", ".");
  - another CLIP's text features may be given (`text_features`: a Hugging Face folder's own);
  - `spacer` is the vocabulary's word-start mark in its pieces (GPT-2's "Ġ"; SentencePiece's "▁");
  - `candidate_text="row"` decodes a candidate with its row and a beam's text as what it adds
    after the prompt (a SentencePiece token's text depends on its neighbours); theirs, `"token"`,
    decodes the token alone.
Everything else -- the order of operations, the random draws, the rules, the ranking and the
final beam search -- is theirs, line by line.
"""
from __future__ import annotations

import random
from itertools import groupby

import numpy as np
import torch
from torch import nn
from transformers import DynamicCache
from transformers.generation.logits_process import (MinLengthLogitsProcessor, NoBadWordsLogitsProcessor,
                                                    NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor)


def _lm(lm, ids, past=None):
    if past is None:
        return lm(ids)
    cache = DynamicCache(ddp_cache_data=[(k, v) for k, v in past])
    try:
        return lm(ids, cache=cache)
    except TypeError:
        return lm(ids, past_key_values=cache)


def filter_video(image_fts, similiarities):
    THRESHOLD = 0.9
    groups = []
    curr_group = []
    for i in range(similiarities.size(0)):
        if len(curr_group) == 0:
            curr_group.append(i)
        if i + 1 == similiarities.size(0):
            if len(curr_group) >= 1:
                groups.append(curr_group)
            break
        if similiarities[curr_group[0]][i + 1] > THRESHOLD:
            curr_group.append(i + 1)
        else:
            if len(curr_group) >= 1:
                groups.append(curr_group)
            curr_group = []
    result_features = []
    selected_indices = []
    if len(groups) >= 1:
        for i, group in enumerate(groups):
            result_features.append(image_fts[group[0]])
            selected_indices.append(group[0])
    return torch.stack(result_features), selected_indices


class CLIPTextGenerator:
    def __init__(self, lm_model, lm_tokenizer, clip_model, seed=0, target_seq_length=15, randomized_prompt=False,
                 token_wise=False, num_dummy_tokens=5, sentence_iterations=64, clip_loss_temperature=1.0,
                 sampling_top_k=3, clip_scale=1., ce_scale=0.2, learning_rate=0.01, scheduler_type="nothing",
                 weight_decay_scale=0.3, repetition_penalty=2.0, entity_penalty=2, ending_bonus=1, end_token='.',
                 beam_size=5, device="cpu", start_id=None, end_id=None, spacer='Ġ', candidate_text="token",
                 text_features=None, **kwargs):
        import clip

        self.clip_tokenize = clip.tokenize
        self.device = device
        self.seed = seed
        self.reset_random_seed()

        self.lm_tokenizer = lm_tokenizer
        self.lm_model = lm_model
        self.start_id = self.lm_tokenizer.bos_token_id if start_id is None else start_id
        self.by_row = candidate_text == "row"
        self.text_features = text_features  # another CLIP's own (a Hugging Face folder's): texts -> features
        self.lm_tokenizer.pad_token = self.lm_tokenizer.eos_token
        self.lm_model.eval()
        for param in self.lm_model.parameters():
            param.requires_grad = False

        dummy_tokens = [self.start_id] * num_dummy_tokens
        dummy_tokens = torch.tensor(dummy_tokens, device=self.device, dtype=torch.long).unsqueeze(0)
        with torch.no_grad():
            cache = _lm(self.lm_model, dummy_tokens, [])  # every layer's keys and values, each position
            cache = getattr(cache, "cache", None) or cache["past_key_values"]
            self.dummy_context_init = [(layer.keys, layer.values) for layer in cache.layers]
        self.dummy_context_offset = [(torch.nn.Parameter(torch.zeros(k.shape).type_as(k)),
                                      torch.nn.Parameter(torch.zeros(v.shape).type_as(v)))
                                     for k, v in self.dummy_context_init]
        self.dummy_optimizer = torch.optim.AdamW([x for pair in self.dummy_context_offset for x in pair],
                                                 lr=learning_rate, weight_decay=learning_rate * weight_decay_scale)
        self.dummy_optimizer_init = self.dummy_optimizer.state_dict()

        if randomized_prompt:
            self.context_options = ['Image of', 'Picture of', 'Photo of', 'Video of',
                                    'Image shows', 'Picture shows', 'Photo shows', 'Video shows',
                                    'Image showing', 'Picture showing', 'Photo showing', 'Video showing']
        else:
            self.context_options = ['']

        self.end_token = self.lm_tokenizer.encode(end_token)[0] if end_id is None else end_id

        lower_chars = [chr(char_ord) for char_ord in range(ord('a'), ord('z') + 1)]
        upper_chars = [chr(char_ord) for char_ord in range(ord('A'), ord('Z') + 1)]
        special_chars = [' ', ',', '\'', spacer]
        decoder = dict(enumerate(self.lm_tokenizer.convert_ids_to_tokens(list(range(self.lm_tokenizer.vocab_size)))))
        forbidden_tokens = [key for key, value in decoder.items()
                            if not set(value).issubset(set(lower_chars + upper_chars + special_chars))
                            or key == self.end_token]
        unwanted_first_tokens = [key for key, value in decoder.items()
                                 if not set(value).issubset(set(lower_chars + upper_chars))]
        unwanted_later_tokens = [key for key, value in decoder.items()
                                 if not set(value).issubset(set(lower_chars + special_chars))]
        self.first_token_offset = torch.zeros((self.lm_tokenizer.vocab_size,), device=self.device)
        self.first_token_offset[unwanted_first_tokens] = -entity_penalty
        self.other_token_offset = torch.zeros((self.lm_tokenizer.vocab_size,), device=self.device)
        self.other_token_offset[unwanted_later_tokens] = -entity_penalty

        self.prevent_forbidden_tokens = NoBadWordsLogitsProcessor([[token] for token in forbidden_tokens],
                                                                  self.end_token)

        self.token_to_similar_indices = torch.zeros((self.lm_tokenizer.vocab_size, 8)).to(torch.long).to(self.device)
        reduced_token_form = {
            key: value.replace(spacer, '').upper() for key, value in decoder.items()
            if key not in forbidden_tokens}
        for reduced_form, token_iter in groupby(sorted(reduced_token_form, key=reduced_token_form.get),
                                                key=reduced_token_form.get):
            tokens = set(token_iter)
            for token in tokens:
                for index, similar in enumerate(tokens):
                    self.token_to_similar_indices[token][index] = similar
        self.deter_small_repeat = RepetitionPenaltyLogitsProcessor(repetition_penalty)
        self.prevent_large_repeat = NoRepeatNGramLogitsProcessor(3)
        self.prevent_early_finish = MinLengthLogitsProcessor(target_seq_length // 2, self.end_token)

        self.clip = clip_model.eval()
        for param in self.clip.parameters():
            param.requires_grad = False
        self.logit_scale = self.clip.logit_scale.exp()

        self.ending_bonus = ending_bonus
        self.token_wise = token_wise
        self.target_seq_length = target_seq_length
        self.sampling_top_k = sampling_top_k
        self.sentence_iterations = sentence_iterations
        self.clip_loss_temperature = clip_loss_temperature
        self.clip_scale = clip_scale
        self.ce_scale = ce_scale
        self.scheduler_type = scheduler_type
        self.beam_size = beam_size

    def prompt(self, text):
        return [self.start_id] + self.lm_tokenizer.encode(text, add_special_tokens=False)

    def reset_random_seed(self):
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        random.seed(self.seed)

    @property
    def dummy_context(self):
        return [(k + k_delta, v + v_delta) for (k, v), (k_delta, v_delta) in
                zip(self.dummy_context_init, self.dummy_context_offset)]

    def dummy_context_reset(self):
        with torch.no_grad():
            for k_delta, v_delta in self.dummy_context_offset:
                k_delta.zero_()
                v_delta.zero_()
        self.dummy_optimizer.load_state_dict(self.dummy_optimizer_init)

    def get_txt_features(self, text):
        with torch.no_grad():
            if self.text_features is not None:
                text_features = self.text_features(text)
            else:
                text_features = self.clip.encode_text(self.clip_tokenize(text, truncate=True).to(self.device))
            text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        return text_features.detach()

    def generate(self, image_features: torch.Tensor):
        self.image_features = image_features
        self.dummy_context_reset()
        self.reset_random_seed()

        if self.scheduler_type == "cosine":
            sentence_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.dummy_optimizer, eta_min=1e-4, T_max=self.sentence_iterations)
        elif self.scheduler_type == "expo":
            sentence_scheduler = torch.optim.lr_scheduler.ExponentialLR(self.dummy_optimizer, gamma=0.9)
        else:
            sentence_scheduler = None

        decoded_options = []
        avg_perplexities = []
        avg_frame_similarities = []
        for gd_iter in range(self.sentence_iterations):
            context_tokens = self.prompt(random.choice(self.context_options))
            generated_tokens = torch.tensor(context_tokens, device=self.device, dtype=torch.long).unsqueeze(0)

            total_perplexity = 0
            for i in range(self.target_seq_length):
                unshifted_outputs = _lm(self.lm_model, generated_tokens)
                unshifted_logits = unshifted_outputs["logits"][:, -1, :]
                unshifted_probs = nn.functional.softmax(unshifted_logits, dim=-1)

                shifted_outputs = _lm(self.lm_model, generated_tokens, self.dummy_context)
                logits = shifted_outputs["logits"][:, -1, :]
                probs = nn.functional.softmax(logits, dim=-1) + 2e-45

                clip_loss, _ = self.clip_loss(probs, generated_tokens, 512)
                fluency_loss = -(unshifted_probs * probs.log()).sum()

                loss = (self.clip_scale * clip_loss) + (self.ce_scale * fluency_loss)
                loss.backward()

                if self.token_wise:
                    self.dummy_optimizer.step()
                    self.dummy_optimizer.zero_grad()

                next_token = self.sample_next_token(logits, i, generated_tokens)
                generated_tokens = torch.cat((generated_tokens, next_token), dim=1)
                total_perplexity += torch.gather(unshifted_probs.log(), 1, next_token).sum(dim=0)

                if next_token == self.end_token:
                    break

            if not self.token_wise:
                self.dummy_optimizer.step()
                self.dummy_optimizer.zero_grad()

            if self.scheduler_type != "nothing":
                sentence_scheduler.step()

            decoded_text = self.lm_tokenizer.batch_decode(generated_tokens, skip_special_tokens=True)
            avg_perplexity = total_perplexity / i
            avg_frame_sim = self.text_to_video_similarity(decoded_text)
            decoded_options.extend(decoded_text)
            avg_perplexities.append(avg_perplexity)
            avg_frame_similarities.append(avg_frame_sim.mean(-1))

        avg_frame_similarities = torch.cat(avg_frame_similarities)
        caption_to_all_frame_prob = nn.functional.softmax(avg_frame_similarities * self.clip_scale, dim=0)
        caption_to_language_prob = nn.functional.softmax(torch.cat(avg_perplexities, dim=0) * self.ce_scale, 0)
        mixed_score = caption_to_all_frame_prob * caption_to_language_prob

        clip_ordered_caption_prob, clip_caption_ordering = avg_frame_similarities.sort(descending=True)
        mixed_ordered_caption_prob, mixed_caption_ordering = mixed_score.sort(descending=True)
        clip_sorted_captions = [decoded_options[index] for index in clip_caption_ordering]
        mixed_sorted_captions = [decoded_options[index] for index in mixed_caption_ordering]
        beam_tokens, beam_caps = self.decode_beam_search(self.dummy_context, self.beam_size)

        self.sentence_scores = [(float(s), float(p)) for s, p in zip(avg_frame_similarities,
                                                                    torch.cat(avg_perplexities, dim=0))]
        return clip_sorted_captions, mixed_sorted_captions, decoded_options, beam_caps

    def decode_beam_search(self, shifted_context, beam_size, prefix_text='Image of a'):
        context_tokens = self.prompt(prefix_text)
        generated_tokens = torch.tensor(context_tokens, device=self.device, dtype=torch.long).unsqueeze(0)
        gen_tokens = None
        scores = None
        seq_lengths = torch.ones(beam_size, device=self.device)
        is_stopped = torch.zeros(beam_size, device=self.device, dtype=torch.bool)

        for i in range(self.target_seq_length):
            with torch.no_grad():
                shifted_outputs = _lm(self.lm_model, generated_tokens, shifted_context)
            logits = shifted_outputs["logits"][:, -1, :]
            logits = self.update_special_tokens_logits(generated_tokens, i, logits)
            logits = torch.log_softmax(logits, dim=-1)

            if scores is None:
                for lid in range(len(shifted_context)):
                    shifted_context[lid] = (shifted_context[lid][0].repeat(beam_size, 1, 1, 1),
                                            shifted_context[lid][1].repeat(beam_size, 1, 1, 1))
                scores, next_tokens = logits.topk(beam_size, -1)
                generated_tokens = generated_tokens.repeat(beam_size, 1)
                next_tokens, scores = next_tokens.permute(1, 0), scores.squeeze(0)
                gen_tokens = next_tokens
            else:
                logits[is_stopped] = -float(np.inf)
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
                generated_tokens = generated_tokens[next_tokens_source]
                scores = scores_sum_average * seq_lengths
                is_stopped = is_stopped[next_tokens_source]
            generated_tokens = torch.cat((generated_tokens, next_tokens), dim=1)
            is_stopped = is_stopped + next_tokens.eq(self.end_token).squeeze()
            if is_stopped.all():
                break

        scores = scores / seq_lengths
        output_list = gen_tokens.cpu().numpy()
        if self.by_row:
            head = self.lm_tokenizer.decode(context_tokens)
            output_texts = [self.lm_tokenizer.decode(context_tokens + output[: int(length)].tolist())[len(head):]
                            for output, length in zip(output_list, seq_lengths)]
        else:
            output_texts = [
                self.lm_tokenizer.decode(output[: int(length)])
                for output, length in zip(output_list, seq_lengths)
            ]
        order = scores.argsort(descending=True)
        output_texts = [output_texts[i] for i in order]
        self.beam_scores = [float(scores[i]) for i in order]
        return generated_tokens, output_texts

    def sample_next_token(self, logits, i, generated_tokens):
        fixed_logits = self.update_special_tokens_logits(generated_tokens, i, logits.detach())
        option_logits, next_token_options = fixed_logits.topk(self.sampling_top_k)
        option_probs = nn.functional.softmax(option_logits, dim=-1)
        next_token_option_index = torch.multinomial(option_probs, num_samples=1)[0]
        return next_token_options[:, next_token_option_index]

    def update_special_tokens_logits(self, context_tokens, i, logits):
        history_len = 16
        history_tokens = context_tokens[:, -history_len:]
        history_similar_tokens = self.token_to_similar_indices[history_tokens].view((-1, history_tokens.shape[1] * 8))
        logits = self.deter_small_repeat(history_similar_tokens, logits)
        logits = self.prevent_large_repeat(context_tokens, logits)
        logits = self.prevent_early_finish(context_tokens, logits)
        logits = self.prevent_forbidden_tokens(context_tokens, logits)
        logits += (self.first_token_offset if i == 0 else self.other_token_offset).unsqueeze(0)
        logits[:, self.end_token] += self.ending_bonus
        if i >= self.target_seq_length - self.prevent_early_finish.min_length:
            ending_threshold = logits[:, self.end_token].clone()
            top_threshold_values, top_threshold_indices = logits.topk(self.sampling_top_k, 1)
            logits[logits < top_threshold_values[:, -1:]] = -np.inf
            logits[:, self.end_token] = ending_threshold
            required_bump = top_threshold_values[:, -1] > ending_threshold
            logits[required_bump, top_threshold_indices[required_bump, -1]] = -np.inf
        logits[logits != logits] = -np.inf
        return logits

    def text_to_video_similarity(self, text_cont):
        with torch.no_grad():
            text_features = self.get_txt_features(text_cont)
        return self.logit_scale * (text_features @ self.image_features.T).type(torch.float32)

    def clip_loss(self, probs, context_tokens, samples: int):
        _, top_next_tokens = probs.topk(samples, -1)
        prefix_texts = self.lm_tokenizer.batch_decode(context_tokens, skip_special_tokens=True)
        prefix_losses = []
        for row, prefix_text, prefix_top_next_tokens, prefix_next_token_prob in zip(context_tokens, prefix_texts,
                                                                                     top_next_tokens, probs):
            top_prefix_continuation = []
            for next_token in prefix_top_next_tokens:
                if self.by_row:  # what the token adds to its row
                    head = self.lm_tokenizer.decode(row)
                    tail = self.lm_tokenizer.decode(row.tolist() + [int(next_token)])[len(head):]
                    top_prefix_continuation.append(prefix_text + tail)
                else:
                    top_prefix_continuation.append(prefix_text + self.lm_tokenizer.decode(next_token))
            cont_video_similarity = self.text_to_video_similarity(top_prefix_continuation)
            cont_video_prob = nn.functional.softmax(cont_video_similarity / self.clip_loss_temperature, dim=0)
            next_token_probs = prefix_next_token_prob[prefix_top_next_tokens]
            cont_video_loss = -cont_video_prob * next_token_probs.log().unsqueeze(-1)
            prefix_losses.append(cont_video_loss.sum(0).mean())
        return torch.sum(torch.stack(prefix_losses)), prefix_losses


SCHEDULE_NAMES = {"constant": "nothing", "cosine": "cosine", "exponential": "expo"}


def reference_args(cfg) -> dict:
    """Their constructor's arguments for a zerocap PseudoTokenConfig."""
    return dict(seed=cfg.seed, target_seq_length=cfg.max_tokens, randomized_prompt=cfg.randomized_prompt,
                token_wise=cfg.token_wise, num_dummy_tokens=cfg.dummy_tokens,
                sentence_iterations=cfg.sentence_iterations, clip_loss_temperature=cfg.clip_temperature,
                sampling_top_k=cfg.sampling_top_k, clip_scale=cfg.clip_scale, ce_scale=cfg.ce_scale,
                learning_rate=cfg.learning_rate, scheduler_type=SCHEDULE_NAMES[cfg.lr_schedule],
                weight_decay_scale=cfg.weight_decay_scale, repetition_penalty=cfg.repetition_penalty,
                entity_penalty=cfg.entity_penalty, ending_bonus=cfg.ending_bonus, end_token=cfg.end_token,
                beam_size=cfg.beam_size)
