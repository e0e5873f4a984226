"""An LM's tokenizer as the decoders read it, whatever its kind: byte-level BPE (GPT-2, GPT-NeoX,
OPT, Llama 3, Qwen) or SentencePiece-style (Llama 2, TinyLlama, Mistral, Gemma).

What differs between them, said once here:
  token texts   what each token adds to a text. A SentencePiece token's text depends on its
                row ("▁dog" is " dog" after a word, "dog" at the start of a decoded text), so a
                token's text is taken after a fixed word (`ANCHOR`): decode([anchor, t]) less
                decode([anchor]). On a byte-level vocabulary that is decode([t]), the authors'
                own candidate text; on a SentencePiece one it is what the token adds to its row.
  prompt ids    BOS (where the family starts prompts with it) as an id, then the text's ids without
                special tokens -- the same ids as the authors' `encode(bos + text)` on GPT-2, and no
                doubled BOS where a tokenizer adds its own.
  text after    the text that generated ids add to a prompt: decode(prompt + ids) less
                decode(prompt), so a caption keeps the space before its first word on every
                family (decode(ids) alone is that text on GPT-2).
  end token     the id the tokenizer gives the end token (".") after a word -- never a byte piece
                ("<0x2E>" decodes to "." too) --, found in words or refused.
"""
from __future__ import annotations

from functools import cached_property

from .errors import InputError

ANCHOR = "a"  # a word every vocabulary holds as one token


def _decode(tokenizer, ids, **kw) -> str:
    return tokenizer.decode(ids, clean_up_tokenization_spaces=False, **kw)


class Vocabulary:
    """The decoders' view of one tokenizer (`size`: the LM's output rows, padding rows included)."""

    def __init__(self, tokenizer, size: int):
        self.tokenizer, self.size = tokenizer, size
        self.bos_id = tokenizer.bos_token_id
        self.bos = tokenizer.bos_token or ""
        # where a family has no BOS (Qwen), the pseudo-tokens start from its end-of-text token
        self.start_id = self.bos_id if self.bos_id is not None else tokenizer.eos_token_id
        self._ends: dict[str, int] = {}

    @cached_property
    def texts(self) -> list[str]:
        """What each token adds to a text (see the module docstring), one per output row."""
        tok = self.tokenizer
        n = len(tok)
        anchor = tok.encode(ANCHOR, add_special_tokens=False)[-1:]
        if not anchor:
            texts = tok.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)
        else:  # a token whose text does not follow the anchor's (none seen) is decoded alone
            head = _decode(tok, anchor)
            after = tok.batch_decode([anchor + [i] for i in range(n)], clean_up_tokenization_spaces=False)
            texts = [a[len(head):] if a.startswith(head) else _decode(tok, [i]) for i, a in enumerate(after)]
        texts += [""] * (self.size - len(texts))  # padded embedding rows decode to nothing
        return texts[:self.size]

    def prompt_ids(self, text: str, bos: bool) -> list[int]:
        """BOS (when `bos` and the tokenizer has one) and the text's ids."""
        start = [self.bos_id] if bos and self.bos_id is not None else []
        return start + self.tokenizer.encode(text, add_special_tokens=False)

    def text_after(self, prompt: list[int], ids: list[int]) -> str:
        """The text `ids` add after `prompt`."""
        if not ids:
            return ""
        head = _decode(self.tokenizer, prompt)
        whole = _decode(self.tokenizer, list(prompt) + list(ids))
        return whole[len(head):] if whole.startswith(head) else _decode(self.tokenizer, ids)

    def end_id(self, end_token: str) -> int:
        """The token that ends a beam: the id the tokenizer itself gives `end_token` after a word
        ("a." -> "a", "."), else alone (on a SentencePiece vocabulary "." alone encodes as "▁",
        "."), else the first token whose text it is, else the first token of its text -- never a
        byte piece ("<0x2E>" also decodes to ".", and comes first in Llama 2's vocabulary), a
        special token or one that is only spaces; InputError where there is none."""
        if end_token not in self._ends:
            self._ends[end_token] = self._end_id(end_token)
        return self._ends[end_token]

    def _end_id(self, end_token: str) -> int:
        tok = self.tokenizer
        special = set(tok.all_special_ids)  # <unk> stands for what the vocabulary lacks

        def usable(i: int) -> bool:
            return 0 <= i < self.size and i not in special and bool(self.texts[i].strip()) and not self.is_byte(i)

        anchor = tok.encode(ANCHOR, add_special_tokens=False)
        after = tok.encode(ANCHOR + end_token, add_special_tokens=False)
        if after[:len(anchor)] == anchor and len(after) == len(anchor) + 1 and usable(after[-1]) \
                and self.texts[after[-1]] == end_token:
            return after[-1]
        alone = [i for i in tok.encode(end_token, add_special_tokens=False) if usable(i)]
        if len(alone) == 1 and self.texts[alone[0]] == end_token:
            return alone[0]
        found = [i for i, t in enumerate(self.texts) if t == end_token and usable(i)]
        if found or alone:
            return (found or alone)[0]
        raise InputError(f"end_token {end_token!r} gives no token of this LM's vocabulary; give a text that does"
                         " (e.g. '.')")

    def is_byte(self, i: int) -> bool:
        """Whether token i is a byte piece of a byte-fallback SentencePiece vocabulary ("<0x2E>")."""
        piece = self.tokenizer.convert_ids_to_tokens(i) if i < len(self.tokenizer) else None
        return isinstance(piece, str) and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")
