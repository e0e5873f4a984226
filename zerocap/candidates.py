"""Candidate tokens -> CLIP token ids, without text processing in the decoding loop.

For every beam and iteration ZeroCap scores `prefix_text + decode(token)` with CLIP for the
top-k LM tokens. `clip.tokenize` on thousands of strings per iteration is slow, so we
precompute, for every LM token, its CLIP BPE pieces as a tensor, and split each candidate
text into a part shared with the beam's prefix (whose CLIP keys/values are cached, see
scorer.py) and a short suffix.

Exactness: the result equals `clip.tokenize(prefix_text + decode(token), truncate=True)`.
CLIP's tokenizer cleans text (ftfy, html.unescape, lower-casing, whitespace folding) and
splits it into words with a regex before BPE. For printable-ASCII text without '&' or '<'
the cleaning is a per-character no-op, and a regex word never spans whitespace, so:
  * a candidate starting a new word ("separable") adds its own pieces after the prefix's;
  * a candidate that continues the prefix's last word (e.g. "dog" + "s") re-encodes only that
    last word, through a small cache, and shares that word's leading pieces with the prefix
    where they are the same ("claw" of "clawf" + "man");
  * anything else (non-ASCII, '&', '<', control characters) is tokenized in full and shares
    the longest common token prefix with the beam's prefix.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

CONTEXT_LENGTH = 77  # CLIP's text context, SOT and EOT included

# Character classes that decide whether CLIP's word regex merges two neighbours.
LETTER, DIGIT, PUNCT, APOSTROPHE, SPACE = range(5)


def char_class(ch: str) -> int:
    if ch.isspace():
        return SPACE
    if ch.isalpha():
        return LETTER
    if ch.isdigit():
        return DIGIT
    return APOSTROPHE if ch == "'" else PUNCT


def _separable_table() -> torch.Tensor:
    """sep[c_last_of_prefix, c_first_of_candidate]: True when CLIP splits the two apart."""
    sep = torch.zeros(5, 5, dtype=torch.bool)
    sep[SPACE, :] = sep[:, SPACE] = True  # whitespace always ends a word
    sep[DIGIT, :] = sep[:, DIGIT] = True  # digits are single-character words
    sep[LETTER, PUNCT] = sep[LETTER, APOSTROPHE] = True  # "dog" + "." / "'s"
    sep[PUNCT, LETTER] = True  # "." + "dog"; but "'" + "s" becomes the word "'s"
    return sep


def is_plain(text: str) -> bool:
    """Text on which CLIP's cleaning is a per-character no-op (see the module docstring)."""
    return text.isascii() and (text.isprintable() or text == "") and "&" not in text and "<" not in text


def padded(rows: list[list[int]], width: int | None = None) -> torch.Tensor:
    """Lists of ids as one zero-padded (len(rows), width or the longest, at least 1) tensor."""
    width = width or max(1, max(map(len, rows), default=1))
    return torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long).view(len(rows), width)


@dataclass
class Prefix:
    """What the candidates of one beam share, computed once per decoding step."""

    text: str
    ids: list[int]  # CLIP ids of the text, no SOT/EOT
    plain: bool
    last_class: int  # class of the last character (SPACE when empty or ending in space)
    tail: str  # the last word: characters after the last whitespace
    head_len: int  # number of ids before the last word's
    row: list[int]  # SOT + ids, cut to the 76 tokens a candidate row can share


class CandidateTokenizer:
    """CLIP token rows for `prefix + decode(lm_token)`, built from precomputed pieces."""

    def __init__(self, lm_token_strings: list[str], clip_tokenizer, device="cpu"):
        self.tok = clip_tokenizer
        self.sot = clip_tokenizer.encoder["<|startoftext|>"]
        self.eot = clip_tokenizer.encoder["<|endoftext|>"]
        self.strings = lm_token_strings
        self.device = torch.device(device)
        self._merge_cache: dict[tuple[str, int], list[int]] = {}
        self._full_cache: dict[tuple[str, int], tuple[int, list[int]]] = {}

        table, lengths, plain, first = self._tables(tuple(lm_token_strings))
        self.piece_ids = table.to(self.device)  # (V, P) CLIP pieces of each LM token alone
        self.piece_len = lengths.to(self.device)  # (V,)
        self.plain = plain.to(self.device)  # (V,) token text is plain ASCII
        self.first_class = first.to(self.device)  # (V,) class of its first character
        self.separable = _separable_table().to(self.device)  # (5, 5)

    _TABLES: dict = {}  # per vocabulary, shared by every engine (and replica) in the process

    def _tables(self, strings: tuple[str, ...]):
        key = (strings, id(self.tok))
        if key not in self._TABLES:
            pieces, plain, first = [], [], []
            for s in strings:
                ok = is_plain(s)
                plain.append(ok)
                pieces.append(self.encode_plain(s) if ok else [])
                first.append(char_class(s[0]) if s.strip() else SPACE)
            self._TABLES[key] = (padded(pieces), torch.tensor(list(map(len, pieces))), torch.tensor(plain),
                                 torch.tensor(first))
        return self._TABLES[key]

    # --- text -> ids -------------------------------------------------------------------------
    _BPE: dict = {}  # per CLIP tokenizer: its merges in the `tokenizers` library's BPE

    def _bpe_model(self):
        """CLIP's BPE (vocabulary and ranked merges) run by the `tokenizers` library: the same pieces
        as CLIP's Python `bpe` (tests/test_candidates.py compares them), about 10x faster -- the
        words a candidate glues onto its prefix's last word are new at almost every step."""
        key = id(self.tok)
        if key not in self._BPE:
            from tokenizers.models import BPE

            ranks = self.tok.bpe_ranks
            self._BPE[key] = BPE(vocab=dict(self.tok.encoder), merges=sorted(ranks, key=ranks.get),
                                 end_of_word_suffix="</w>")
        return self._BPE[key]

    def bpe_ids(self, word: str) -> list[int]:
        """CLIP ids of one byte-encoded word: what `encoder[p] for p in tok.bpe(word).split()` gives."""
        return [t.id for t in self._bpe_model().tokenize(word)]

    def _words(self, text: str) -> list[str]:
        """Plain text's CLIP words, byte-encoded (for printable ASCII, which a word of plain text
        is, CLIP's byte encoding is the identity)."""
        return self.tok.pat.findall(re.sub(r"\s+", " ", text).strip().lower())

    def encode_plain(self, text: str) -> list[int]:
        """CLIP ids of plain text; equal to the tokenizer's encode (cleaning is a no-op)."""
        return [i for word in self._words(text) for i in self.bpe_ids(word)]

    def encode(self, text: str) -> list[int]:
        return self.encode_plain(text) if is_plain(text) else self.tok.encode(text)

    def tokenize_full(self, text: str) -> list[int]:
        """Exactly `clip.tokenize(text, truncate=True)[0]` without its zero padding."""
        ids = [self.sot] + self.tok.encode(text) + [self.eot]
        if len(ids) > CONTEXT_LENGTH:
            ids = ids[:CONTEXT_LENGTH]
            ids[-1] = self.eot
        return ids

    def prefix(self, text: str) -> Prefix:
        plain = is_plain(text)
        ids = self.encode(text)
        stripped = text.rstrip()
        if not stripped or stripped != text:
            last, tail = SPACE, ""
        else:
            last = char_class(text[-1])
            tail = re.split(r"\s", text)[-1]
        head_len = len(ids) - (len(self.encode_plain(tail)) if plain and tail else 0)
        row = ([self.sot] + ids)[: CONTEXT_LENGTH - 1]
        return Prefix(text, ids, plain, last, tail, head_len, row)

    def pad(self, rows: list[list[int]]) -> torch.Tensor:
        """Zero-padded (len(rows), longest) tensor on the device."""
        return padded(rows).to(self.device)

    # --- candidate rows --------------------------------------------------------------------------
    def rows(self, prefixes: list[Prefix], top: torch.Tensor, needed: torch.Tensor | None = None):
        """Suffix rows for candidates `top` (R, K) of beams `prefixes` (R).

        Returns (shared, suffix, eot_index): for each candidate, the number of leading tokens it
        shares with its prefix's row (R, K); the tokens after them (R, K, S), EOT included and
        zero-padded; and the index of EOT in the suffix (R, K). With `needed` (R, K), only
        those candidates' rows are guaranteed: the others skip the slow (re-tokenising) path.
        """
        dev = self.device
        R, K = top.shape
        plain_pre = torch.tensor([p.plain for p in prefixes], device=dev)  # (R,)
        last = torch.tensor([p.last_class for p in prefixes], device=dev)  # (R,)
        full_len = torch.tensor([1 + len(p.ids) for p in prefixes], device=dev)  # (R,)

        sep = self.plain[top] & plain_pre[:, None] & self.separable[last[:, None], self.first_class[top]]
        shared = full_len[:, None].expand(R, K).clone()  # (R, K)
        content = self.piece_ids[top]  # (R, K, P)
        length = self.piece_len[top].clone()  # (R, K)

        slow = (~sep if needed is None else ~sep & needed).nonzero().tolist()  # few; one device->host copy
        if slow:
            top_cpu = top.cpu().tolist()
            heads, flat = [], []  # (r, k, shared, length) of each slow row; their ids, one list
            for r, k in slow:
                m, ids = self._slow_row(prefixes[r], top_cpu[r][k])
                heads.append((r, k, m, len(ids)))
                flat += ids
            rr, kk, m, n = torch.tensor(heads, device=dev).T
            width = max(content.shape[-1], int(n.max()))
            if width > content.shape[-1]:
                content = torch.nn.functional.pad(content, (0, width - content.shape[-1]))
            shared[rr, kk] = m
            length[rr, kk] = n
            content[rr, kk] = 0
            # each slow row's ids in place: (row, candidate, index in the row) of every id
            first = (torch.cumsum(n, 0) - n).repeat_interleave(n)
            where = rr.repeat_interleave(n), kk.repeat_interleave(n), torch.arange(len(flat), device=dev) - first
            content[where] = torch.tensor(flat, dtype=torch.long, device=dev)

        # clip.tokenize(truncate=True): keep the first 76 tokens, then EOT
        shared = shared.clamp(max=CONTEXT_LENGTH - 1)
        length = torch.minimum(length, CONTEXT_LENGTH - 1 - shared)  # (R, K)
        S = int(length.max()) + 1
        if content.shape[-1] < S:
            content = torch.nn.functional.pad(content, (0, S - content.shape[-1]))
        suffix = content[..., :S].clone()  # (R, K, S)
        j = torch.arange(S, device=dev)
        suffix[j >= length[..., None]] = 0
        suffix.scatter_(-1, length[..., None], self.eot)
        return shared, suffix, length

    def _slow_row(self, prefix: Prefix, token: int) -> tuple[int, list[int]]:
        """(shared, content) of a candidate that is not separable from its prefix."""
        s = self.strings[token]
        if prefix.plain and is_plain(s):  # continues the last word: re-encode that word only
            key = (prefix.tail, token)
            hit = self._merge_cache.get(key)
            if hit is None:
                ids = self.encode_plain(prefix.tail + s)
                tail_ids, common = prefix.ids[prefix.head_len:], 0
                while common < min(len(ids), len(tail_ids)) and ids[common] == tail_ids[common]:
                    common += 1
                hit = self._merge_cache[key] = (common, ids)
                if len(self._merge_cache) > 200_000:
                    self._merge_cache.clear()
            # the word's leading pieces it has in common with the prefix's (a tenth of a step's tokens
            # on the tests' models) are the prefix's: shared, as far as the prefix's row goes
            common, ids = hit
            common = max(0, min(common, len(prefix.row) - 1 - prefix.head_len))
            return 1 + prefix.head_len + common, ids[common:]
        key = (prefix.text, token)
        hit = self._full_cache.get(key)
        if hit is None:
            full = self.tokenize_full(prefix.text + s)
            end = full.index(self.eot)  # CLIP reads the features at argmax = the first EOT
            row, m, limit = prefix.row, 0, min(len(prefix.row), end)
            while m < limit and row[m] == full[m]:
                m += 1
            hit = self._full_cache[key] = (m, full[m:end])
            if len(self._full_cache) > 50_000:
                self._full_cache.clear()
        return hit
