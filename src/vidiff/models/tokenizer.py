"""OpenCLIP / CLIP byte-level BPE tokenizer with the exact semantics of ``open_clip.tokenize`` (open_clip_torch 2.22.0).

The official LVDM text encoders feed ``open_clip.tokenize`` ids to the text tower. Padding is with id 0 (not EOT as in
Hugging Face's CLIPTokenizer) and the padded positions are part of the cross-attention context, so reproducing the
ids bit for bit matters for the embeddings.
"""

from __future__ import annotations

import gzip
import html
import os
import shutil
from importlib import resources
from pathlib import Path

import ftfy
import regex
import torch

from vidiff.models.persistence import read_json_config
from vidiff.utils.io import atomic_write_json, atomic_write_with

SOT_TEXT = "<start_of_text>"
EOT_TEXT = "<end_of_text>"
DEFAULT_VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"
CONFIG_NAME = "tokenizer_config.json"

# The CLIP vocabulary: 256 byte symbols, the same 256 with the end-of-word marker, the first 48894 merges, SOT, EOT.
_NUM_MERGES = 49152 - 256 - 2
_END_OF_WORD = "</w>"
_CACHE_LIMIT = 100_000

# Words are split the way CLIP does before BPE: the special tokens, English contractions, runs of letters,
# single digits, and runs of other non-space symbols.
_WORD_PATTERN = regex.compile(
    "|".join(map(regex.escape, (SOT_TEXT, EOT_TEXT)))
    + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


def default_vocab_path() -> Path:
    """The BPE merge list shipped with vidiff (MIT, OpenAI; see assets/CLIP_BPE_LICENSE.txt)."""
    return Path(str(resources.files("vidiff").joinpath("assets", DEFAULT_VOCAB_NAME)))


def _byte_symbols() -> list[tuple[int, str]]:
    """(byte, symbol) pairs in CLIP's vocabulary order.

    Bytes that are printable Latin-1 characters stand for themselves; the remaining bytes (controls, space, ...) are
    given the code points 256, 257, ... in byte order, so that BPE never sees whitespace or control characters.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    kept = set(printable)
    pairs = [(b, chr(b)) for b in printable]
    extra = 0
    for b in range(256):
        if b not in kept:
            pairs.append((b, chr(256 + extra)))
            extra += 1
    return pairs


def _clean(text: str) -> str:
    """Text normalisation of open_clip: ftfy, HTML entities (twice, for double-escaped text), whitespace, case."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


class OpenCLIPTokenizer:
    """Callable tokenizer returning ``(n, context_length)`` int64 ids, identical to ``open_clip.tokenize``."""

    def __init__(self, vocab_path: str | os.PathLike | None = None, context_length: int = 77) -> None:
        if not isinstance(context_length, int) or isinstance(context_length, bool) or context_length < 2:
            raise ValueError(f"context_length must be an int >= 2 (room for SOT and EOT), got {context_length!r}")
        self.context_length = context_length
        self.vocab_path = Path(vocab_path) if vocab_path is not None else default_vocab_path()
        merges = self._read_merges(self.vocab_path)

        byte_symbols = _byte_symbols()
        self._byte_to_symbol = dict(byte_symbols)
        symbols = [s for _, s in byte_symbols]
        vocab = symbols + [s + _END_OF_WORD for s in symbols] + ["".join(m) for m in merges] + [SOT_TEXT, EOT_TEXT]
        self._ids = {piece: i for i, piece in enumerate(vocab)}
        self._merge_rank = {pair: rank for rank, pair in enumerate(merges)}
        self.sot_token_id = self._ids[SOT_TEXT]
        self.eot_token_id = self._ids[EOT_TEXT]
        self.pad_token_id = 0
        self.vocab_size = len(vocab)
        self._cache: dict[str, list[int]] = {}

    @staticmethod
    def _read_merges(path: Path) -> list[tuple[str, str]]:
        if not path.is_file():
            raise FileNotFoundError(f"BPE vocabulary not found: {path}")
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                lines = f.read().split("\n")
        except (OSError, UnicodeDecodeError, EOFError) as err:
            raise ValueError(f"cannot read the BPE vocabulary {path} (expected a gzip'd CLIP merge list): {err}") from err
        # Line 0 is a version header; CLIP uses exactly the next _NUM_MERGES lines.
        body = lines[1 : 1 + _NUM_MERGES]
        merges = [tuple(line.split()) for line in body]
        if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(
                f"{path} is not a CLIP BPE merge list: expected {_NUM_MERGES} lines of two symbols after the header"
            )
        return merges  # type: ignore[return-value]

    # ------------------------------------------------------------------ encoding
    def _bpe_ids(self, word: str) -> list[int]:
        """Ids of one pre-split word after greedy lowest-rank-first pair merging."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        if word in (SOT_TEXT, EOT_TEXT):
            return [self._ids[word]]
        symbol_word = "".join(self._byte_to_symbol[b] for b in word.encode("utf-8"))
        parts = [*symbol_word[:-1], symbol_word[-1] + _END_OF_WORD]
        while len(parts) > 1:
            best = min(zip(parts, parts[1:]), key=lambda pair: self._merge_rank.get(pair, _NUM_MERGES))
            if best not in self._merge_rank:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):  # merge every non-overlapping occurrence, left to right
                if i + 1 < len(parts) and parts[i] == best[0] and parts[i + 1] == best[1]:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = [self._ids[p] for p in parts]
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without SOT/EOT and without truncation."""
        if not isinstance(text, str):
            raise TypeError(f"expected a str prompt, got {type(text).__name__}")
        ids: list[int] = []
        for word in _WORD_PATTERN.findall(_clean(text)):
            ids.extend(self._bpe_ids(word))
        return ids

    def __call__(self, texts: str | list[str] | tuple[str, ...]) -> torch.LongTensor:
        """SOT + ids + EOT per prompt, zero-padded; prompts that are too long are cut and end with EOT."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)):
            raise TypeError(f"expected a str or a list of str, got {type(texts).__name__}")
        if len(texts) == 0:
            raise ValueError("no prompts given: pass a string or a non-empty list of strings")
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write tokenizer_config.json (and a copy of the vocabulary when it is not the packaged one)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        vocab_file = None
        if self.vocab_path.resolve() != default_vocab_path().resolve():
            vocab_file = self.vocab_path.name
            atomic_write_with(folder / vocab_file, lambda tmp: shutil.copyfile(self.vocab_path, tmp))
        config = {
            "tokenizer_class": type(self).__name__,
            "context_length": self.context_length,
            "vocab_file": vocab_file,
        }
        atomic_write_json(folder / CONFIG_NAME, config)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> OpenCLIPTokenizer:
        """Load what save_pretrained wrote; a missing vocab_file means the packaged vocabulary."""
        folder = Path(folder)
        path = folder / CONFIG_NAME
        config = read_json_config(path, cls.__name__)
        if config.get("tokenizer_class") != cls.__name__:
            raise ValueError(f"{path} does not describe an {cls.__name__}")
        vocab_file = config.get("vocab_file")
        vocab_path = folder / vocab_file if vocab_file else None
        return cls(vocab_path=vocab_path, context_length=config.get("context_length", 77))

