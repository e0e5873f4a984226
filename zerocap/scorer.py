"""The scorer: CLIP, the one module that calls its image and text towers.

ZeroCap needs three things of its scorer: an image's embedding (`image_features`), texts'
embeddings (`text_features`), and -- at every context-shift iteration -- the features of the
texts `prefix + token` for each beam's top-k candidate tokens (`fast_candidates` /
`exact_candidates`, which the form picks). Target embeddings (target.py), reranking (rerank.py),
CLIP-S (evaluate.py) and the guide (guide.py) all go through it.

`TextScorer` is the plain contract: give image and text features and the candidates come from
decoding each candidate's text (what the authors' code does); `HFClipScorer` is that for a
Hugging Face CLIPModel / SiglipModel folder. `ClipScorer` is OpenAI CLIP (or an OpenCLIP model
with CLIP's text tower) with two faster candidate paths that skip the text processing (the
tower's pieces -- embedding, attention inputs, residuals, projection -- from its adapter,
clip_towers.py):
  exact   CLIP's own `encode_text` on full 77-token rows built from precomputed pieces
          (candidates.py): bit-for-bit what clip.tokenize + encode_text give;
  fast    CLIP's text transformer is causal and reads its features at the EOT position, so a
          candidate row `shared prefix tokens + suffix + EOT` needs only the suffix positions
          computed, attending to the prefix's cached keys/values (`encode_prefix` once per
          step, `encode_candidates` per iteration); a candidate's features are kept for the step.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from .candidates import CONTEXT_LENGTH, CandidateTokenizer
from .clip_towers import tower_of
from .images import clip_pixels
from .limits import CLIP_PROMPT_TOKENS


class TextScorer:
    """A scorer defined by its embeddings alone (subclass: `model`, `preprocess`, `text_features`,
    `image_features`, `text_tokens`); candidates are scored through their decoded texts."""

    max_text_tokens: int | None = None  # longest text it reads whole (None: no limit)
    shares_prefixes = False  # whether fast_candidates reads a prefix once for all its candidates

    @property
    def logit_scale(self) -> torch.Tensor:
        """The factor of image-text cosines before a softmax over texts: the CLIP model's own
        (`clip.logit_scale`, learned as a log), else 100, trained CLIP's value."""
        clip = getattr(self, "clip", None)
        if clip is None or not hasattr(clip, "logit_scale"):
            return torch.tensor(100.0)
        return clip.logit_scale.exp().float()

    def image_features(self, images: list) -> torch.Tensor:
        """Raw embeddings (n, D) of 8-bit RGB PIL images."""
        return self.prepared_features([self.prepare_image(im) for im in images])

    def prepare_image(self, image):
        """What `prepared_features` takes for one image (CLIP: its pixels, 3 x 224 x 224), so that
        a batch holds small prepared inputs, not the images."""
        return image

    def prepared_features(self, prepared: list) -> torch.Tensor:
        """Raw embeddings (n, D) of prepared images."""
        raise NotImplementedError

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Raw embeddings (n, D) of texts."""
        raise NotImplementedError

    def text_tokens(self, text: str) -> int:
        """How many tokens the scorer reads for `text` (checked against max_text_tokens)."""
        return 0

    def use_vocabulary(self, token_strings: list[str]) -> None:
        """The LM's token texts, which the candidates are (called once by the engine)."""
        self.token_strings = token_strings

    @staticmethod
    def normalised(x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True)

    def fast_candidates(self, prefix_texts: list[str], eager: bool = False) -> "StringCandidates":
        return StringCandidates(self, prefix_texts)

    def exact_candidates(self, prefix_texts: list[str]) -> "StringCandidates":
        return StringCandidates(self, prefix_texts)


class StringCandidates:
    """Candidate features of one decoding step from their texts: prefix + the token's text."""

    def __init__(self, scorer: TextScorer, prefix_texts: list[str]):
        self.scorer, self.prefixes = scorer, prefix_texts

    def features(self, top: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised features (R, K, D) of prefix_r + token for the candidates top (R, K) (valid
        (R, K): those needed; a candidate path may compute more)."""
        strings = self.scorer.token_strings
        rows = [[p + strings[t] for t in ids] for p, ids in zip(self.prefixes, top.tolist())]
        feats = [self.scorer.normalised(self.scorer.text_features(texts)) for texts in rows]
        return torch.stack(feats)


class HFClipScorer(TextScorer):
    """A Hugging Face `CLIPModel` or `SiglipModel` folder (model, tokenizer, image processor):
    candidates are scored from their decoded texts, whole -- the authors' way, and the only one a
    non-causal text tower (SigLIP's, read at its last token) allows: no prefix of a row can be
    reused. `logit_scale` as the model's (SigLIP's bias shifts every candidate alike)."""

    def __init__(self, model, tokenizer, image_processor, device=None):
        self.clip = self.model = model.eval().requires_grad_(False)
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.context = model.config.text_config.max_position_embeddings
        self.max_text_tokens = self.context - 3  # its special tokens, and room for a generated word
        # SigLIP was trained on texts padded to its full context; CLIP reads its EOT, wherever it is
        self.padding = "max_length" if model.config.model_type.startswith("siglip") else True
        if tokenizer.pad_token is None:  # batches of texts are padded (with EOT: CLIP reads the first)
            tokenizer.pad_token = tokenizer.eos_token

    def preprocess(self, image) -> torch.Tensor:
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]

    def prepare_image(self, image) -> torch.Tensor:
        return clip_pixels(image, self.preprocess)

    @staticmethod
    def _pooled(out) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @torch.no_grad()
    def prepared_features(self, prepared: list) -> torch.Tensor:
        pixels = torch.stack(prepared).to(self.device, self.dtype)
        return self._pooled(self.model.get_image_features(pixel_values=pixels))

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(list(texts), padding=self.padding, truncation=True, max_length=self.context,
                             return_tensors="pt").to(self.device)
        return self._pooled(self.model.get_text_features(**enc))

    def text_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


class PrefixCache(NamedTuple):
    """Per-layer keys/values of the beams' prefix rows.  keys[l]: (R, h, P, hd)"""

    keys: list
    values: list


class ClipScorer(TextScorer):
    """OpenAI CLIP (`clip.model.CLIP`): both towers, and the text tower in pieces or whole."""

    max_text_tokens = CLIP_PROMPT_TOKENS.hi  # 77 - SOT - EOT - room for a generated word
    shares_prefixes = True
    WINDOW = 16  # candidate rows of more tokens run in packed passes of their own

    def __init__(self, clip_model, preprocess, device=None, tower: type | None = None):
        """tower: the text tower's adapter class (clip_towers.py; its CLIP kind's loader names it),
        else told from the model (clip_towers.tower_of)."""
        import clip  # OpenAI CLIP (PyPI: clip-anytorch)

        self.clip = clip_model.eval().requires_grad_(False)
        self.model, self.preprocess = self.clip, preprocess
        self.tokenize = clip.tokenize
        self.tokenizer = clip.clip._tokenizer
        self.device = torch.device(device) if device is not None else next(clip_model.parameters()).device
        self.candidates = None  # candidates.CandidateTokenizer, once the LM's vocabulary is known
        self.compiled: dict | None = None  # compile(): CLIP's passes for fixed-size candidate buffers
        # candidate tokens a packed pass runs: on a GPU a pass is launch-bound, so few large ones
        # (a bound on its memory); a CPU's stay in its caches (of 512 to 4,096 tokens and one pass,
        # 2,048 was the fastest on 4 requests' 2,048 rows, 1.1x one pass and 1.5x 4,096 tokens;
        # the tests' models, 2-core AMD EPYC)
        on_gpu = next(clip_model.parameters()).device.type == "cuda"
        self.chunk_tokens = 16384 if on_gpu else 2048
        self.tower = tower(clip_model) if tower is not None else tower_of(clip_model)
        self.blocks, self.heads, self.embed_dim = self.tower.blocks, self.tower.heads, self.tower.embed_dim
        self.dtype = self.tower.dtype

    # ---- embeddings -----------------------------------------------------------------------------
    def prepare_image(self, image) -> torch.Tensor:
        """CLIP's input pixels of an 8-bit RGB PIL image (images.clip_pixels: CLIP's preprocessing
        after the aspect bound)."""
        return clip_pixels(image, self.preprocess)

    @torch.no_grad()
    def prepared_features(self, prepared: list) -> torch.Tensor:
        return self.clip.encode_image(torch.stack(prepared).to(self.device, self.dtype))

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Raw embeddings (n, D) of texts, truncated at CLIP's 77 tokens."""
        return self.clip.encode_text(self.tokenize(texts, truncate=True).to(self.device))

    def text_tokens(self, text: str) -> int:
        return len(self.candidates.encode(text) if self.candidates is not None else self.tokenizer.encode(text))

    def use_vocabulary(self, token_strings: list[str]) -> None:
        super().use_vocabulary(token_strings)
        self.candidates = CandidateTokenizer(token_strings, self.tokenizer, self.device)

    def fast_candidates(self, prefix_texts: list[str], eager: bool = False) -> "FastCandidates":
        """The fast path's candidates: in fixed-size compiled buffers once compile() ran, unless
        `eager` (a caller whose shapes the compiled passes were not sized for)."""
        if self.compiled is not None and not eager:
            return FixedCandidates(self, prefix_texts)
        return FastCandidates(self, prefix_texts)

    def compile(self, mode: str = "default") -> None:
        """Score candidates in fixed-size buffers with CLIP's passes compiled (FixedCandidates):
        on a GPU, where a pass is launch-bound; a CPU keeps the eager, smaller passes."""
        self.compiled = {name: torch.compile(getattr(self, name), mode=mode, fullgraph=True, dynamic=False)
                         for name in ("encode_prefix", "_encode_rows")}
        self.compiled["encode_rows"] = self.compiled.pop("_encode_rows")

    def run_compiled(self, name: str, *args):
        """A compiled pass, or the eager one (without compile(), or once compiling failed)."""
        eager = getattr(self, "_encode_rows" if name == "encode_rows" else name)
        if self.compiled is None:
            return eager(*args)
        try:
            return self.compiled[name](*args)
        except Exception as e:  # noqa: BLE001 -- whatever torch.compile raises, scoring goes on eagerly
            import warnings

            warnings.warn(f"torch.compile failed for CLIP ({type(e).__name__}); scoring eagerly", RuntimeWarning,
                          stacklevel=2)
            self.compiled = None
            return eager(*args)

    def exact_candidates(self, prefix_texts: list[str]) -> "ExactCandidates":
        return ExactCandidates(self, prefix_texts)

    @torch.no_grad()
    def encode_prefix(self, prefix_rows: torch.Tensor) -> PrefixCache:
        """Keys/values of the prefix rows (R, P): SOT + prefix ids, zero-padded. (The last block's
        attention and MLP are not run: only its keys and values are read.)"""
        P, device = prefix_rows.shape[1], prefix_rows.device
        x = self.tower.embed(prefix_rows, torch.arange(P, device=device))  # (R, P, d)
        causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            q, k, v = self.tower.qkv(block, x)  # (R, h, P, hd)
            keys.append(k)
            values.append(v)
            if i < len(self.blocks) - 1:
                x = self.tower.finish(block, x, F.scaled_dot_product_attention(q, k, v, attn_mask=causal))
        return PrefixCache(keys, values)

    @torch.no_grad()
    def encode_full(self, prefix_rows: torch.Tensor, shared: torch.Tensor, suffix: torch.Tensor,
                    eot_index: torch.Tensor) -> torch.Tensor:
        """The same features through CLIP's own `encode_text` on full 77-token rows -> (R, K, D).

        Bit-for-bit what `clip.tokenize` + `encode_text` give (the fp32 path): only the text
        processing is skipped. prefix_rows (R, P): SOT + prefix ids, zero-padded.
        """
        R, K, S = suffix.shape
        dev = suffix.device
        full = torch.zeros(R, K, 78, dtype=torch.long, device=dev)  # column 77 collects padding
        P = prefix_rows.shape[1]
        full[..., :P] = prefix_rows[:, None, :] * (torch.arange(P, device=dev) < shared[..., None])
        j = torch.arange(S, device=dev)
        pos = torch.where(j <= eot_index[..., None], shared[..., None] + j, 77)
        full.scatter_(-1, pos, suffix)
        feats = torch.cat([self.clip.encode_text(rows) for rows in full[..., :77]])  # one beam at a time
        feats = feats / feats.norm(dim=-1, keepdim=True)
        return feats.view(R, K, -1)

    def encode_candidates(
        self, cache: PrefixCache, shared: torch.Tensor, suffix: torch.Tensor, eot_index: torch.Tensor,
        needed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """L2-normalised features of candidate rows  -> (R, K, D)

        shared (R, K): prefix tokens each row reuses; suffix (R, K, S): its own tokens;
        eot_index (R, K): where EOT sits in the suffix; needed (R, K): the rows to compute
        (default all; the others come back as zeros). The rows' real tokens run packed, with no
        padding (`_encode_packed`), `chunk_tokens` at a time (whole rows); rows longer than
        WINDOW tokens (rare: a long word continued) run in passes of their own, so that one long
        row does not widen every row's attention window.
        """
        return self._candidates(cache, None, shared, suffix, eot_index, needed)[1]

    def encode_with_prefix(
        self, prefix_rows: torch.Tensor, shared: torch.Tensor, suffix: torch.Tensor, eot_index: torch.Tensor,
        needed: torch.Tensor | None = None,
    ) -> tuple[PrefixCache, torch.Tensor]:
        """encode_prefix(prefix_rows) and encode_candidates with it, the prefix rows' tokens run in
        the first packed pass beside the candidates' (each layer's linear layers once for both):
        -> (the prefix cache, for the step's later iterations; features (R, K, D))."""
        return self._candidates(None, prefix_rows, shared, suffix, eot_index, needed)

    @torch.no_grad()
    def _candidates(self, cache, prefix_rows, shared, suffix, eot_index, needed) -> tuple[PrefixCache, torch.Tensor]:
        R, K, S = suffix.shape
        dev = suffix.device
        beam = torch.arange(R, device=dev).repeat_interleave(K)  # (M,)
        shared, suffix, eot_index = shared.reshape(-1), suffix.reshape(R * K, S), eot_index.reshape(-1)
        out = torch.zeros(R * K, self.embed_dim, dtype=self.dtype, device=dev)
        rows = torch.arange(R * K, device=dev) if needed is None else needed.reshape(-1).nonzero()[:, 0]
        if rows.numel() == 0:
            return (cache if cache is not None else self.encode_prefix(prefix_rows)), out.view(R, K, -1)
        long = eot_index[rows] >= self.WINDOW
        for group in (rows[~long], rows[long]):
            if group.numel() == 0:
                continue
            # whole rows, about chunk_tokens tokens a pass: the chunk of each row's first token
            first = torch.cumsum(eot_index[group] + 1, 0) - (eot_index[group] + 1)
            sizes = torch.unique_consecutive(first // self.chunk_tokens, return_counts=True)[1].tolist()
            for idx in group.split(sizes):
                lo, hi = int(beam[idx[0]]), int(beam[idx[-1]]) + 1  # rows are in beam order
                args = beam[idx] - lo, shared[idx], suffix[idx], eot_index[idx]
                if cache is None:  # the first pass: the prefix rows' tokens too
                    cache, f = self._encode_packed(None, *args, prefix_rows=prefix_rows, span=(lo, hi))
                else:
                    part = PrefixCache([k[lo:hi] for k in cache.keys], [v[lo:hi] for v in cache.values])
                    f = self._encode_packed(part, *args)
                out[idx] = f / f.norm(dim=-1, keepdim=True)
        return cache, out.view(R, K, -1)

    def _encode_packed(self, cache: PrefixCache | None, beam, shared, suffix, eot_index, prefix_rows=None,
                       span=None):
        """Features (M, D) of M rows in beam order, their N real tokens packed (no padding): beam (M,)
        picks each row's prefix (cache.keys[l]: (B, h, P, hd)), suffix (M, S), EOT at eot_index (M,).

        A token attends to its prefix's first `shared` positions (its prefix's keys, shared by
        the rows of that prefix: no copy per row) and to the tokens of its own row up to itself
        (a window of the W packed tokens before it, as a view). The last block runs every token's
        keys and values but only the EOT tokens' queries, attention output and MLP: nothing else
        of it is read. Without a cache, the rows' prefixes are prefix_rows[span[0]:span[1]] (B, P),
        and every prefix row's keys and values are computed in this pass, as encode_prefix computes
        them (causal attention among a prefix's positions; the last block's keys and values only):
        their tokens ride in each block's linear layers beside the candidates' -> (the PrefixCache,
        features)."""
        M = suffix.shape[0]
        fused = cache is None
        if fused:
            Bp, P = prefix_rows.shape
            B, h = span[1] - span[0], self.heads
        else:
            B, h, P, _ = cache.keys[0].shape
        dev = suffix.device
        length = eot_index + 1
        W = int(length.max())
        j = torch.arange(W, device=dev)
        real = j < length[:, None]  # (M, W)
        row = torch.arange(M, device=dev)[:, None].expand(M, W)[real]  # (N,) each token's row
        pos = j.expand(M, W)[real]  # (N,) its index in the row
        N = row.numel()
        ends = torch.cumsum(length, 0) - 1  # (M,) each row's EOT among the packed tokens
        ids, positions = suffix[:, :W][real], shared[row] + pos  # rows end by position 76 (rows())
        if fused:  # the prefix rows' tokens first, then the candidates': x (Bp * P + N, d)
            ids = torch.cat([prefix_rows.reshape(-1), ids])
            positions = torch.cat([torch.arange(P, device=dev).repeat(Bp), positions])
            causal = torch.ones(P, P, dtype=torch.bool, device=dev).tril()
            keys, values = [], []
        first = Bp * P if fused else 0  # where the candidates' tokens start
        xa = self.tower.embed(ids, positions)
        see = torch.cat([torch.arange(P, device=dev) < shared[row][:, None],  # its prefix's positions
                         j >= (W - 1 - pos)[:, None]], dim=1)  # window slot t is the token W - 1 - t back
        bias = torch.zeros(N, 1, P + W, dtype=torch.float32, device=dev).masked_fill_(~see[:, None], -math.inf)

        def groups(token_beam):  # queries in beam order -> their place in a (B, most) grid, or None (one prefix)
            if B == 1:
                return None
            counts = torch.bincount(token_beam, minlength=B)
            slot = torch.arange(token_beam.numel(), device=dev) - (torch.cumsum(counts, 0) - counts)[token_beam]
            return token_beam, slot, int(counts.max())

        def by_prefix(a, keys, grid):  # a (n, h, c) against its prefix's keys (B, h, c, e) -> (n, h, e)
            if grid is None:
                return torch.matmul(a.transpose(0, 1), keys[0]).transpose(0, 1)
            token_beam, slot, most = grid  # a prefix's queries padded to the longest group: one batched product
            padded = a.new_zeros(B, most, h, a.shape[-1])
            padded[token_beam, slot] = a
            return torch.matmul(padded.transpose(1, 2), keys).transpose(1, 2)[token_beam, slot]

        every, eots = groups(beam[row]), groups(beam)
        scale = (self.tower.width // h) ** -0.5
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            qkv = self.tower.attention_inputs(block, xa)
            if fused:  # the prefixes' queries, keys and values (Bp, h, P, hd); theirs for the rows here
                qp, kp, vp = (t.reshape(Bp, P, h, -1).transpose(1, 2) for t in qkv[:first].chunk(3, dim=-1))
                keys.append(kp)
                values.append(vp)
                pk, pv = kp[span[0]:span[1]], vp[span[0]:span[1]]
            else:
                pk, pv = cache.keys[i], cache.values[i]
            q, k, v = (t.view(N, h, -1) for t in qkv[first:].chunk(3, dim=-1))
            window_k = F.pad(k, (0, 0, 0, 0, W - 1, 0)).unfold(0, W, 1)  # (N, h, hd, W)
            window_v = F.pad(v, (0, 0, 0, 0, W - 1, 0)).unfold(0, W, 1)
            mask, grid, x = bias, every, xa[first:]
            if i == last:  # only the EOT tokens are read from here on
                q, window_k, window_v, mask, x, grid = q[ends], window_k[ends], window_v[ends], bias[ends], x[ends], eots
            scores = torch.cat([by_prefix(q, pk.transpose(-1, -2), grid), torch.einsum("nhd,nhdw->nhw", q, window_k)], -1)
            attn = torch.softmax(scores.float() * scale + mask, dim=-1).to(x.dtype)  # (n, h, P + W)
            o = (by_prefix(attn[..., :P], pv, grid) + torch.einsum("nhw,nhdw->nhd", attn[..., P:], window_v)).flatten(1)
            if fused and i < last:  # the prefixes' own causal attention, then both through the block's rest
                own = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=causal).transpose(1, 2)
                o, x = torch.cat([own.reshape(first, -1), o]), xa
            xa = self.tower.residuals(block, x, o)
        features = self.tower.project(xa)  # (M, D)
        return (PrefixCache(keys, values), features) if fused else features

    def _encode_rows(self, cache: PrefixCache, beam, shared, suffix, eot_index) -> torch.Tensor:
        """Features (M, D) of M rows; beam (M,) picks each row's prefix, suffix (M, S)."""
        M, S = suffix.shape
        P = cache.keys[0].shape[-2]
        dev = suffix.device
        j = torch.arange(S, device=dev)
        # padding after EOT may run past CLIP's last position; it never reaches the EOT feature
        positions = (shared[:, None] + j).clamp(max=self.tower.positions - 1)
        x = self.tower.embed(suffix, positions)  # (M, S, d)
        # suffix position i sees prefix positions < shared and suffix positions <= i
        see_prefix = (torch.arange(P, device=dev) < shared[:, None])[:, None, None, :].expand(M, 1, S, P)
        see_suffix = torch.ones(S, S, dtype=torch.bool, device=dev).tril().expand(M, 1, S, S)
        mask = torch.cat([see_prefix, see_suffix], dim=-1)  # (M, 1, S, P + S)
        one = cache.keys[0].shape[0] == 1  # one prefix row (a lone request's step): no gather needed
        for block, pk, pv in zip(self.blocks, cache.keys, cache.values):
            q, k, v = self.tower.qkv(block, x)  # (M, h, S, hd)
            pk, pv = (pk.expand(M, -1, -1, -1), pv.expand(M, -1, -1, -1)) if one else (pk[beam], pv[beam])
            keys = torch.cat([pk, k], dim=-2)  # (M, h, P + S, hd)
            values = torch.cat([pv, v], dim=-2)
            x = self.tower.finish(block, x, F.scaled_dot_product_attention(q, keys, values, attn_mask=mask))
        x = x[torch.arange(M, device=dev), eot_index]  # (M, d)
        return self.tower.project(x)  # (M, D)



class StepFeatures:
    """CLIP features of the (row, token) candidates met so far in one decoding step.

    Within a step the prefixes are fixed, so a candidate's text, hence its features, depends
    only on (row, token). The top-k of successive context-shift iterations overlap heavily
    (3.5x repeats on the tests' random models), so each iteration encodes only the candidates
    no earlier iteration ranked. The (R, V) table of where each candidate's features sit is made
    when a second iteration asks (a step of one iteration -- the pseudo-token method's -- never
    needs it).
    """

    def __init__(self, rows: int, vocab: int, device):
        self.shape, self.device = (rows, vocab), device
        self.slot: torch.Tensor | None = None  # (R, V) into table, once a second iteration asks
        self.table: torch.Tensor | None = None  # (n, D)
        self._first: tuple | None = None  # the first iteration's (top, new, feats), until then

    def _untouched(self) -> bool:
        """No iteration of the step has come yet."""
        return self._first is None and self.slot is None

    def missing(self, top: torch.Tensor) -> torch.Tensor:
        """(R, K) bool: candidates `top` (R, K) not seen yet."""
        if self._untouched():  # the step's first iteration: every one
            return torch.ones(top.shape, dtype=torch.bool, device=top.device)
        return self._slots().gather(1, top) < 0

    def _slots(self) -> torch.Tensor:
        if self.slot is None:
            self.slot = torch.full(self.shape, -1, dtype=torch.int32, device=self.device)
            top, new, feats = self._first
            self._first = None
            self._store(top, new, feats)
        return self.slot

    def _store(self, top: torch.Tensor, new: torch.Tensor, feats: torch.Tensor) -> None:
        r, k = new.nonzero(as_tuple=True)
        start = 0 if self.table is None else self.table.shape[0]
        self.slot[r, top[r, k]] = torch.arange(start, start + r.numel(), dtype=torch.int32, device=r.device)
        fresh = feats[r, k]  # (m, D)
        self.table = fresh if self.table is None else torch.cat([self.table, fresh])

    def update(self, top: torch.Tensor, new: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Store the rows `new` (R, K) of feats (R, K, D); return the features of all of `top`."""
        if self._untouched():  # the first iteration: its own features
            self._first = (top, new, feats)
            return feats  # (the rows not `new` are zeros: any finite features)
        self._slots()
        self._store(top, new, feats)
        if self.table.shape[0] == 0:  # nothing needed yet (every row frozen): any finite features
            return feats
        return self.table[self.slot.gather(1, top).long()]  # (R, K, D); an unseen candidate: some row


class _ClipCandidates:
    def __init__(self, scorer: ClipScorer, prefix_texts: list[str]):
        self.scorer, self.candidates = scorer, scorer.candidates
        self.prefixes = [self.candidates.prefix(t) for t in prefix_texts]
        self.prefix_rows = self.candidates.pad([p.row for p in self.prefixes])  # (R, P): SOT + prefix ids


class ExactCandidates(_ClipCandidates):
    """CLIP's own `encode_text` on full 77-token rows (the authors' operation order): every
    candidate, as they do (one request at a time, so `valid` is all of them)."""

    def features(self, top: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        with record_function("zerocap.candidate_rows"):
            shared, suffix, eot = self.candidates.rows(self.prefixes, top)
        with record_function("zerocap.clip_candidates"):
            return self.scorer.encode_full(self.prefix_rows, shared, suffix, eot)


class FixedCandidates(_ClipCandidates):
    """Candidate features in buffers of fixed size, for a compiled step on a GPU: every row's top-k
    at every iteration (no reuse across iterations: how many are new varies), suffixes padded to
    WIDTH tokens and prefixes to 76 -- the same shapes at every iteration and step, so the CLIP
    passes are captured once (ClipScorer.compile). A suffix longer than WIDTH (rare: a long word
    continued) runs eagerly; its features are the same."""

    WIDTH = 16

    def __init__(self, scorer: ClipScorer, prefix_texts: list[str]):
        super().__init__(scorer, prefix_texts)
        rows = self.prefix_rows
        self.prefix_rows = torch.nn.functional.pad(rows, (0, CONTEXT_LENGTH - 1 - rows.shape[1]))  # (R, 76)
        with record_function("zerocap.clip_prefix"):
            self.cache = scorer.run_compiled("encode_prefix", self.prefix_rows)

    def features(self, top: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        R, K = top.shape  # every candidate, valid or not: the buffers' shapes are fixed
        with record_function("zerocap.candidate_rows"):
            shared, suffix, eot = self.candidates.rows(self.prefixes, top)  # (R, K), (R, K, S), (R, K)
        W = self.WIDTH
        fixed = torch.zeros(R, K, W, dtype=suffix.dtype, device=suffix.device)
        fixed[..., :min(W, suffix.shape[-1])] = suffix[..., :W]
        beam = torch.arange(R, device=top.device).repeat_interleave(K)
        with record_function("zerocap.clip_candidates"):
            feats = self.scorer.run_compiled("encode_rows", self.cache, beam, shared.reshape(-1),
                                             fixed.reshape(R * K, W), eot.clamp(max=W - 1).reshape(-1))
            feats = self.scorer.normalised(feats).view(R, K, -1)
            longer = eot >= W
            if bool(longer.any()):
                feats = torch.where(longer[..., None], self.scorer.encode_candidates(
                    self.cache, shared, suffix, eot, needed=longer), feats)
        return feats


class FastCandidates(_ClipCandidates):
    """Prefix keys/values once per step (in the first iteration's pass), only the suffixes per
    iteration, features kept for the step."""

    def __init__(self, scorer: ClipScorer, prefix_texts: list[str]):
        super().__init__(scorer, prefix_texts)
        self.cache: PrefixCache | None = None  # the first features() computes it, in its own pass
        self.seen = StepFeatures(len(self.prefixes), len(self.candidates.strings), self.prefix_rows.device)

    def features(self, top: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Features of the candidates `top` (R, K); with `valid`, only those are computed (the others
        come back as any finite features)."""
        new = self.seen.missing(top)  # (R, K) only candidates no earlier iteration ranked
        if valid is not None:
            new = new & valid
        with record_function("zerocap.candidate_rows"):
            shared, suffix, eot = self.candidates.rows(self.prefixes, top, needed=new)
        with record_function("zerocap.clip_candidates"):
            if self.cache is None:
                self.cache, feats = self.scorer.encode_with_prefix(self.prefix_rows, shared, suffix, eot, needed=new)
            else:
                feats = self.scorer.encode_candidates(self.cache, shared, suffix, eot, needed=new)
        return self.seen.update(top, new, feats)
