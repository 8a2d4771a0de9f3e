"""Text side: a word tokenizer (its vocabulary saved with the model) and a small transformer.

The query encoder turns class names ("red circle") or referring expressions
("the small blue square left of the green triangle") into unit-length query
embeddings. It runs once per query set; the image model takes the embeddings
as its `query_embeds` input.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from vggt_deploy.errors import UserError
from vggt_deploy.model.layers import Block

PAD, UNK = "[PAD]", "[UNK]"


class WordTokenizer:
    """Lower-cased word tokenizer with a fixed vocabulary; unknown words map to [UNK]."""

    def __init__(self, words: list[str]) -> None:
        self.vocab = [PAD, UNK] + sorted(set(words) - {PAD, UNK})
        self.index = {w: i for i, w in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    @staticmethod
    def split(text: str) -> list[str]:
        return re.findall(r"[a-z0-9]+", text.lower())

    def encode(self, texts: list[str], max_len: int) -> torch.Tensor:
        """Token ids (Q, max_len), padded with 0; longer texts are truncated."""
        ids = torch.zeros(len(texts), max_len, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = [self.index.get(w, 1) for w in self.split(text)][:max_len] or [1]
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return ids

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"vocab": self.vocab}, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        """The vocabulary written by `save`: {"vocab": ["[PAD]", "[UNK]", sorted unique words...]}."""
        path = Path(path)
        if path.is_dir():
            raise UserError(f"{path}: is a folder; expected the vocabulary file written with the model")
        if path.exists() and not path.is_file():  # a FIFO or device would block the read
            raise UserError(f"{path}: not a regular file (a pipe, socket or device)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path}: vocabulary file not found (it is written next to the weights)") from None
        except OSError as exc:
            raise UserError(f"{path}: cannot read the vocabulary file ({exc.strerror or exc})") from None
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise UserError(f"{path}: not a vocabulary file (invalid JSON: {str(exc)[:120]})") from None
        vocab = data.get("vocab") if isinstance(data, dict) else data if isinstance(data, list) else None
        if not isinstance(vocab, list):
            raise UserError(f'{path}: not a vocabulary file (expected {{"vocab": [words...]}} '
                            f"as written by save_model)")
        bad = next((i for i, w in enumerate(vocab) if not isinstance(w, str) or not w), None)
        if bad is not None:
            raise UserError(f"{path}: vocab[{bad}] must be a non-empty string, got {json.dumps(vocab[bad])[:40]}")
        if vocab[:2] != [PAD, UNK]:
            raise UserError(f"{path}: vocabulary must start with {PAD}, {UNK}")
        words = vocab[2:]
        if words != sorted(set(words) - {PAD, UNK}):
            raise UserError(f"{path}: words must be unique and sorted after {PAD}, {UNK} (token ids follow that "
                            "order; an edited vocabulary would shift them); restore the file saved with the model")
        return cls(words)


class QueryEncoder(nn.Module):
    """Embedding + learned positions + pre-norm blocks + masked mean pool + projection."""

    def __init__(self, vocab_size: int, dim: int, depth: int, num_heads: int, max_len: int, out_dim: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(1, max_len, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList([Block(dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """token_ids (Q, L) -> unit-norm embeddings (Q, out_dim)."""
        keep = (token_ids != 0).float()  # (Q, L)
        mask = ((1.0 - keep) * -1e4)[:, None, None, :]  # (Q, 1, 1, L): no attention to padding
        x = self.embed(token_ids) + self.pos[:, : token_ids.shape[1]]
        for block in self.blocks:
            x = block(x, mask=mask)
        x = self.norm(x)
        pooled = (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1.0)
        return nn.functional.normalize(self.proj(pooled), dim=-1)
