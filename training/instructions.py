"""Token tables for a cache's language instructions: tokenised once at start-up, looked up per batch.

A cache stores each step's instruction as an id into ``instructions.json`` (a
few dozen distinct strings for LIBERO), so tokenising per batch would redo the
same work thousands of times: the table ``[num_instructions, L]`` lives on the
device and a batch is one index. Random-init backbones use a byte tokenizer
(no files, no downloads); a pretrained backbone uses its own tokenizer from a
local directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class Tokenizer(Protocol):
    """The little the trainer needs from a tokenizer."""

    pad_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """Token ids, with the model's begin-of-text token if it has one."""
        ...


@dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, then BOS, EOS and PAD."""

    bos_id: int = 256
    eos_id: int = 257
    pad_id: int = 258
    vocab_size: int = 259

    def encode(self, text: str) -> list[int]:
        """BOS + bytes."""
        return [self.bos_id, *text.encode("utf-8")]


@dataclass(frozen=True)
class HFTokenizer:
    """A transformers tokenizer loaded from a local directory."""

    inner: object
    pad_id: int
    vocab_size: int

    @classmethod
    def load(cls, directory: str) -> HFTokenizer:
        """AutoTokenizer.from_pretrained(directory, local_files_only=True); the caller checked it is a directory."""
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return cls(inner=tok, pad_id=int(pad if pad is not None else 0), vocab_size=len(tok))

    def encode(self, text: str) -> list[int]:
        """Ids with the tokenizer's special tokens."""
        return list(self.inner.encode(text, add_special_tokens=True))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class TokenTable:
    """Padded token ids and their mask, one row per instruction."""

    ids: torch.Tensor  # long [N, L]
    mask: torch.Tensor  # bool [N, L]
    truncated: int  # instructions longer than L

    @property
    def length(self) -> int:
        """L, the text length every sample gets."""
        return int(self.ids.shape[1])

    def to(self, device: torch.device) -> TokenTable:
        """The table on a device."""
        return TokenTable(self.ids.to(device), self.mask.to(device), self.truncated)


def token_table(instructions: list[str], tokenizer: Tokenizer, max_tokens: int) -> TokenTable:
    """Tokenise every instruction once, right-padded to the longest (at most max_tokens)."""
    encoded = [tokenizer.encode(text) for text in instructions] or [[tokenizer.pad_id]]
    length = max(1, min(max_tokens, max(len(e) for e in encoded)))
    ids = torch.full((len(encoded), length), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), length), dtype=torch.bool)
    for row, tokens in enumerate(encoded):
        tokens = tokens[:length]
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = True
    return TokenTable(ids, mask, sum(len(e) > length for e in encoded))
