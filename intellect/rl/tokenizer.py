"""The tiny CPU model's character tokenizer, kept free of torch so that the orchestrator can load it without
importing torch (``intellect.rl.model`` re-exports both names)."""

from __future__ import annotations

import string

TINY_NAME = "tiny-char-llama"


class CharTokenizer:
    """One token per character. Ids 0-2 are pad, bos, eos."""

    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2
    specials = ("<pad>", "<bos>", "<eos>")
    chars = string.digits + string.ascii_letters + " +-*/=()[]{}<>.,:;!?'\"_#|\\^%$&@~`\n"

    def __init__(self) -> None:
        self.vocab = list(self.specials) + list(self.chars)
        self._ids = {c: i for i, c in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, bos: bool = False) -> list[int]:
        unknown = sorted({c for c in text if c not in self._ids})
        if unknown:
            raise ValueError(f"characters not in the tiny tokenizer: {unknown!r}")
        ids = [self._ids[c] for c in text]
        return [self.bos_token_id, *ids] if bos else ids

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        out = []
        for i in ids:
            if i < len(self.specials):
                if i == self.eos_token_id and skip_special:
                    break
                if skip_special:
                    continue
            out.append(self.vocab[i])
        return "".join(out)
