"""Text tokenizers: UTF-8 bytes (the default, needs nothing downloaded) or a local HF `tokenizer.json`.

Both map `str -> list[int]` with ids in [0, vocab_size) and back, add no special tokens (the sequence
builder places BOS/EOT itself), and save to a directory as `text_tokenizer.json` (+ `tokenizer.json` for HF)
so that `load_text_tokenizer` rebuilds an identical tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

from robofm.errors import UsageError

CONFIG = "text_tokenizer.json"
HF_FILE = "tokenizer.json"
KINDS = ("bytes", "hf")


class ByteTokenizer:
    """One token per UTF-8 byte: ids 0..255."""

    kind = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        """Never raises: ids outside 0..255 are skipped and invalid UTF-8 becomes U+FFFD."""
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG).write_text(json.dumps({"kind": self.kind}))


class HFTextTokenizer:
    """A local HF `tokenizer.json` read with the `tokenizers` library; encodes without special tokens."""

    kind = "hf"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._tok = Tokenizer.from_file(str(self.path))
        except Exception as e:  # tokenizers raises plain Exception for missing and malformed files alike
            raise UsageError(f"cannot read HF tokenizer file {self.path}: {e}") from e

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Ids outside [0, vocab_size) are skipped (tokenizers would reject negative ones)."""
        n = self.vocab_size
        return self._tok.decode([int(i) for i in ids if 0 <= int(i) < n], skip_special_tokens=False)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # Re-serialise rather than copy the file: also works when saving into the directory it came from.
        self._tok.save(str(directory / HF_FILE))
        (directory / CONFIG).write_text(json.dumps({"kind": self.kind}))


TextTokenizer = ByteTokenizer | HFTextTokenizer


def build_text_tokenizer(kind: str = "bytes", path: str | None = None) -> TextTokenizer:
    """`kind="bytes"` (path must be None) or `kind="hf"` with `path` to a local `tokenizer.json`."""
    if kind == "bytes":
        if path is not None:
            raise UsageError(f"text tokenizer 'bytes' takes no path, got {path!r}")
        return ByteTokenizer()
    if kind == "hf":
        if path is None:
            raise UsageError("text tokenizer 'hf' needs a path to a local tokenizer.json")
        return HFTextTokenizer(path)
    raise UsageError(f"unknown text tokenizer kind {kind!r}; known: {', '.join(KINDS)}")


def load_text_tokenizer(directory: Path) -> TextTokenizer:
    """Rebuild the tokenizer that `save(directory)` wrote."""
    config = Path(directory) / CONFIG
    try:
        kind = json.loads(config.read_text())["kind"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"cannot read text tokenizer config {config}: {e!r}") from e
    if kind == "hf":
        return HFTextTokenizer(Path(directory) / HF_FILE)
    return build_text_tokenizer(kind)
