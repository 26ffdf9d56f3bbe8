"""Action normalization and tokenization, each with its inverse.

`Normalizer` maps raw state/action values per embodiment with q01/q99 to [-1, 1] (clipped). Action chunks
of normalized values [s, D] (s steps, D = the model's padded dims) are then tokenized by either
- `BinningActionTokenizer`: one token per step and dim, uniform bins over [-1, 1]; or
- `FastActionTokenizer`: FAST (Pertsch et al. 2025): DCT over time, scale, round, BPE trained on the data.
Both stand behind the `ActionTokenizer` protocol (encode, decode, slots) and decode to continuous chunks with a
stated error bound for inputs in [-1, 1].
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tokenizers import Tokenizer, models, trainers

from robofm.errors import UsageError

log = logging.getLogger(__name__)
Array = np.ndarray | torch.Tensor
CONFIG = "action_tokenizer.json"
EMPTY, END = -1, -2  # slot values besides token ids: no token here (no loss); the end of a variable-length chunk


class ActionTokenizer(Protocol):
    """What the sequence builder and the sampler need of an action tokenizer: normalized chunks [N, s, D] in
    [-1, 1] <-> rows [N, slots(s, D)] of token ids in [0, vocab_size), EMPTY or END.

    A fixed-length tokenizer (binning) fills one slot per step and real dimension and leaves the slots of padded
    dimensions EMPTY; a variable-length one (FAST) fills its slots in order, closes the chunk with END and leaves
    the rest EMPTY. `empty_slots` says which slots stay EMPTY whatever the chunk, so a sampler never fills them."""

    kind: str
    variable_length: bool

    @property
    def vocab_size(self) -> int: ...

    def slots(self, steps: int, dims: int) -> int: ...

    def encode(self, chunks: Array, dims: Array | None = None) -> Array:
        """chunks [N, s, D], dims bool [N, D] (False: a padded dimension) -> ids [N, slots], of chunks' kind."""
        ...

    def decode(self, ids: Array, steps: int, dims: int) -> Array:
        """ids [N, slots] -> float32 chunks [N, steps, dims] in [-1, 1], of ids' kind; never raises on bad ids."""
        ...

    def empty_slots(self, dims: torch.Tensor, steps: int) -> torch.Tensor:
        """bool [N, slots]: the slots that no chunk of these real dimensions (dims bool [N, D]) fills."""
        ...

    def expected(self, probs: torch.Tensor, steps: int, dims: int) -> torch.Tensor | None:
        """The expected chunk [N, steps, dims] under per-slot distributions over the ids, probs [N, slots, V]; None
        for a tokenizer whose ids carry no value of their own (FAST's BPE tokens)."""
        ...

    def save(self, directory: Path) -> None: ...


class Normalizer:
    """Per-embodiment affine map q01 -> -1, q99 -> 1 of the first dims(embodiment) entries, clipped to [-1, 1]."""

    def __init__(self, bounds: dict[str, tuple[list[float], list[float]]]):
        self.bounds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for emb, (q01, q99) in bounds.items():
            lo, hi = np.asarray(q01, np.float64), np.asarray(q99, np.float64)
            if lo.ndim != 1 or lo.shape != hi.shape:
                raise UsageError(f"embodiment {emb!r}: q01, q99 must be 1-D of one length, got {lo.shape}, {hi.shape}")
            if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (hi >= lo).all()):
                raise UsageError(f"embodiment {emb!r}: q01/q99 must be finite with q99 >= q01, got {lo}, {hi}")
            self.bounds[emb] = (lo, hi)

    @classmethod
    def from_stats(cls, stats: dict, key: str) -> Normalizer:
        """From a store's stats.json content; embodiments without `key` statistics (action-free data) are absent."""
        if key not in ("state", "action"):
            raise UsageError(f"normalizer key must be 'state' or 'action', got {key!r}")
        # The store writes {} for a field no episode had; older or hand-written stats may write None or omit it.
        return cls({emb: (e[key]["q01"], e[key]["q99"]) for emb, e in stats.items() if (e or {}).get(key)})

    @classmethod
    def merge(cls, normalizers: Sequence[Normalizer]) -> Normalizer:
        """Union of embodiments; one present in several gets the lowest q01 and highest q99 per dim (covers all)."""
        merged: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for n in normalizers:
            for emb, (lo, hi) in n.bounds.items():
                if emb in merged:
                    lo0, hi0 = merged[emb]
                    if len(lo0) != len(lo):
                        raise UsageError(f"embodiment {emb!r}: {len(lo0)} dims in one normalizer, {len(lo)} in another")
                    lo, hi = np.minimum(lo0, lo), np.maximum(hi0, hi)
                merged[emb] = (lo, hi)
        return cls({emb: (lo.tolist(), hi.tolist()) for emb, (lo, hi) in merged.items()})

    def dims(self, embodiment: str) -> int:
        return len(self._bounds(embodiment)[0])

    def _bounds(self, embodiment: str) -> tuple[np.ndarray, np.ndarray]:
        if embodiment not in self.bounds:
            raise UsageError(f"no normalization statistics for embodiment {embodiment!r}; known: {sorted(self.bounds)}")
        return self.bounds[embodiment]

    def _affine(self, embodiment: str, last_dim: int, inverse: bool) -> tuple[np.ndarray, np.ndarray]:
        """Float32 (a, b) of y = a * x + b on the first dims(embodiment) entries."""
        lo, hi = self._bounds(embodiment)
        if last_dim < len(lo):
            raise UsageError(f"embodiment {embodiment!r} has {len(lo)} dims, got an array with last dim {last_dim}")
        span = hi - lo
        const = span == 0
        if inverse:  # x = (y + 1) * span / 2 + lo; a constant dim (span 0) comes back as q01
            a, b = span / 2, span / 2 + lo
        else:  # y = 2 (x - q01) / span - 1; a constant dim maps to 0
            a = np.where(const, 0.0, 2 / np.where(const, 1.0, span))
            b = np.where(const, 0.0, -1 - lo * a)
        return a.astype(np.float32), b.astype(np.float32)

    def normalize(self, x: Array, embodiment: str) -> Array:
        """x [..., D], D >= dims(embodiment) -> float32 [..., D] of the same kind and device.

        The first dims(embodiment) entries map to [-1, 1] (clipped); padded entries are 0."""
        a, b = self._affine(embodiment, x.shape[-1], inverse=False)
        return _apply_affine(x, a, b, clip=True)

    def unnormalize(self, y: Array, embodiment: str) -> Array:
        """Inverse of normalize on the first dims (not clipped: a value beyond [-1, 1] extrapolates linearly).

        y [..., D] -> float32 [..., D] of the same kind and device; padded entries are 0, constant dims q01."""
        a, b = self._affine(embodiment, y.shape[-1], inverse=True)
        return _apply_affine(y, a, b, clip=False)

    def state_dict(self) -> dict:
        return {"bounds": {emb: {"q01": lo.tolist(), "q99": hi.tolist()} for emb, (lo, hi) in self.bounds.items()}}

    @classmethod
    def from_state_dict(cls, d: dict) -> Normalizer:
        return cls({emb: (b["q01"], b["q99"]) for emb, b in d["bounds"].items()})


def _apply_affine(x: Array, a: np.ndarray, b: np.ndarray, clip: bool) -> Array:
    """float32 copy of x [..., D] with the first len(a) entries replaced by a * x + b (clipped) and the rest 0."""
    d = len(a)
    if isinstance(x, torch.Tensor):
        x = x.float()
        a, b = torch.as_tensor(a, device=x.device), torch.as_tensor(b, device=x.device)
        out = torch.zeros_like(x)
    else:
        x = np.asarray(x, np.float32)
        out = np.zeros_like(x)
    y = x[..., :d] * a + b
    out[..., :d] = y.clip(-1, 1) if clip else y
    return out


def _write_config(directory: Path, config: dict) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG).write_text(json.dumps(config))


class BinningActionTokenizer:
    """n_bins uniform bins over [-1, 1] (width w = 2 / n_bins); a token decodes to its bin centre.

    Bound: |decode(encode(x)) - clip(x, -1, 1)| <= w / 2 = 1 / n_bins for every entry (NaN is encoded as 0)."""

    kind = "binning"
    variable_length = False

    def __init__(self, n_bins: int = 256):
        if int(n_bins) != n_bins or n_bins < 1:
            raise UsageError(f"n_bins must be a positive integer, got {n_bins!r}")
        self.n_bins = int(n_bins)

    @property
    def vocab_size(self) -> int:
        return self.n_bins

    def slots(self, steps: int, dims: int) -> int:
        return steps * dims

    def encode(self, chunks: Array, dims: Array | None = None) -> Array:
        """Normalized chunks [..., s, D] -> int64 tokens [..., s * D], step-major (all dims of step 0 first); the
        slots of dimensions that `dims` [..., D] marks False are EMPTY."""
        if isinstance(chunks, torch.Tensor):
            x = torch.nan_to_num(chunks.float(), nan=0.0).clamp(-1, 1)
            ids = torch.floor((x + 1) * (self.n_bins / 2)).long().clamp(0, self.n_bins - 1)
            if dims is not None:
                ids = ids.masked_fill(~torch.as_tensor(dims, dtype=torch.bool)[..., None, :], EMPTY)
        else:
            x = np.clip(np.nan_to_num(np.asarray(chunks, np.float64), nan=0.0), -1, 1)
            ids = np.clip(np.floor((x + 1) * (self.n_bins / 2)).astype(np.int64), 0, self.n_bins - 1)
            if dims is not None:
                ids = np.where(np.asarray(dims, bool)[..., None, :], ids, EMPTY)
        return ids.reshape(*ids.shape[:-2], -1)  # (..., s * D); x = 1 falls in the last bin via the clip above

    def empty_slots(self, dims: torch.Tensor, steps: int) -> torch.Tensor:
        return ~dims.bool()[:, None, :].expand(-1, steps, -1).reshape(len(dims), -1)  # (N, s * D), step-major

    def expected(self, probs: torch.Tensor, steps: int, dims: int) -> torch.Tensor:
        """The mean of the bin centres under each slot's distribution: the estimate of least squared error, where
        the most likely bin of a wide distribution may lie far from its mass (e.g. at a clipped extreme)."""
        centres = (torch.arange(self.n_bins, device=probs.device) + 0.5) * (2 / self.n_bins) - 1
        return (probs.float() @ centres).reshape(len(probs), steps, dims)

    def decode(self, tokens: Array, steps: int, dims: int) -> Array:
        """Tokens [..., steps * dims] -> float32 bin centres [..., steps, dims]; ids outside [0, n_bins) (EMPTY
        too) are clamped."""
        if tokens.shape[-1] != steps * dims:
            raise UsageError(f"expected {steps} * {dims} = {steps * dims} action tokens, got {tokens.shape[-1]}")
        if isinstance(tokens, torch.Tensor):
            ids = tokens.long().clamp(0, self.n_bins - 1).float()
        else:
            ids = np.clip(np.asarray(tokens, np.int64), 0, self.n_bins - 1).astype(np.float32)
        centres = (ids + 0.5) * (2 / self.n_bins) - 1
        return centres.reshape(*centres.shape[:-1], steps, dims)

    def save(self, directory: Path) -> None:
        _write_config(directory, {"kind": self.kind, "n_bins": self.n_bins})

    @classmethod
    def load(cls, directory: Path) -> BinningActionTokenizer:
        return _load_as(cls, directory)


# Integer coefficient q is written as the character chr(CHAR_BASE + q + q_max): the Private Use Area holds no
# whitespace or combining marks, so no tokenizers component can split, strip or normalize them.
CHAR_BASE, CHAR_END = 0xE000, 0xF8FF
MAX_Q = (CHAR_END - CHAR_BASE) // 2


@functools.cache
def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II as an [n, n] matrix (its transpose is the inverse). A matrix product rather than
    scipy.fft: chunks are a few steps long, and scipy's FFT thread pool joins its threads at every fork, which
    deadlocked a DataLoader starting its workers."""
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    m.setflags(write=False)
    return m


class FastActionTokenizer:
    """FAST: per-dim orthonormal DCT-II over time, times `scale`, rounded, frequency-major, then BPE.

    Fitted for one chunk shape [steps, dims] by `fit` (dims = the model's padded dims). Inputs are clipped to
    [-1, 1] (NaN read as 0); rounded coefficients are clipped to |q| <= q_max = ceil(scale * sqrt(steps)), which
    never binds: an orthonormal DCT coefficient of a chunk in [-1, 1] is at most sqrt(steps) in magnitude.

    Round-trip bound for x in [-1, 1]: rounding moves each coefficient by <= 0.5 / scale, so per dim the
    coefficient error, and hence (orthonormality) the time-domain error, has L2 norm <= 0.5 * sqrt(steps) / scale,
    which bounds every entry: max |decode(encode(x)) - x| <= 0.5 * sqrt(steps) / scale = error_bound().
    The final clip to [-1, 1] can only shrink the error.
    """

    kind = "fast"
    variable_length = True

    def __init__(self, scale: float = 10.0, vocab_size: int = 1024, chunk_slots: int = 0):
        if not 0 < scale < math.inf or int(vocab_size) != vocab_size or vocab_size < 1:
            raise UsageError(f"FAST needs finite scale > 0 and integer vocab_size >= 1, got {scale!r}, {vocab_size!r}")
        if chunk_slots == 1 or chunk_slots < 0:
            raise UsageError("FAST action chunks need sequence.action_tokens >= 2 slots (tokens and EOA), or 0 to size them")
        self.scale, self.requested_vocab_size = float(scale), int(vocab_size)
        self.chunk_slots = int(chunk_slots)  # slots of a chunk in the sequence, END included (0: sized by fit)
        self.steps: int | None = None
        self.dims: int | None = None
        self.q_max: int | None = None
        self._bpe: Tokenizer | None = None
        self.truncated_chunks = 0  # chunks longer than their slots (they decode through the fallback of _decode)

    @property
    def vocab_size(self) -> int:
        """Actual BPE vocabulary size; below the requested one when the data has fewer merges to offer."""
        return self._fitted().get_vocab_size()

    def error_bound(self) -> float:
        """max |decode(encode(x)) - x| for x [steps, dims] in [-1, 1]: 0.5 * sqrt(steps) / scale."""
        self._fitted()
        return 0.5 * math.sqrt(self.steps) / self.scale

    def _fitted(self) -> Tokenizer:
        if self._bpe is None:
            raise UsageError("FAST action tokenizer is not fitted: call fit(chunks) or load it from a directory")
        return self._bpe

    def _set_shape(self, steps: int, dims: int) -> None:
        q_max = math.ceil(self.scale * math.sqrt(steps))
        if steps < 1 or dims < 1 or q_max > MAX_Q:
            raise UsageError(f"FAST cannot tokenize chunks of shape {(steps, dims)} at scale {self.scale}: "
                             f"needs steps, dims >= 1 and scale * sqrt(steps) <= {MAX_Q}")  # fmt: skip
        self.steps, self.dims, self.q_max = steps, dims, q_max

    def _to_text(self, chunk: Array) -> str:
        x = chunk.detach().cpu().numpy() if isinstance(chunk, torch.Tensor) else np.asarray(chunk)
        if x.shape != (self.steps, self.dims):
            raise UsageError(f"FAST tokenizer was fitted for chunks of shape {(self.steps, self.dims)}, got {x.shape}")
        x = np.clip(np.nan_to_num(x.astype(np.float64), nan=0.0), -1, 1)
        q = np.rint(dct_matrix(self.steps) @ x * self.scale).astype(np.int64)  # (s, D), row = frequency
        q = np.clip(q, -self.q_max, self.q_max).ravel()  # frequency-major: coeff 0 of every dim, then coeff 1, ...
        return "".join(map(chr, (q + CHAR_BASE + self.q_max).tolist()))

    def fit(self, chunks: Iterable[Array]) -> FastActionTokenizer:
        """Train the BPE on normalized chunks, all of one shape [steps, dims] (taken from the first); returns self.
        Without chunk_slots, a chunk gets room for the longest fitted chunk, a quarter more, and END."""
        chunks = list(chunks)
        if not chunks or len(chunks[0].shape) != 2:
            got = "no chunks" if not chunks else f"shape {tuple(chunks[0].shape)}"
            raise UsageError(f"FAST fit needs chunks of shape [steps, dims], got {got}")
        self._bpe = None  # a failed fit leaves the tokenizer unfitted, not half-fitted
        self._set_shape(int(chunks[0].shape[0]), int(chunks[0].shape[1]))
        alphabet = [chr(CHAR_BASE + i) for i in range(2 * self.q_max + 1)]
        # No normalizer and no pre-tokenizer: each chunk's whole string is one BPE word, kept verbatim.
        bpe = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(vocab_size=self.requested_vocab_size, initial_alphabet=alphabet,
                                      special_tokens=[], show_progress=False)  # fmt: skip
        bpe.train_from_iterator((self._to_text(c) for c in chunks), trainer)
        self._bpe = bpe
        if not self.chunk_slots:
            self.chunk_slots = math.ceil(1.25 * max(len(t) for t in self.encode_batch(chunks))) + 1
        return self

    def slots(self, steps: int, dims: int) -> int:
        self._fitted()
        if (steps, dims) != (self.steps, self.dims):
            raise UsageError(f"FAST tokenizer was fitted for chunks of shape {(self.steps, self.dims)}, not "
                             f"{(steps, dims)}")  # fmt: skip
        return self.chunk_slots

    def encode(self, chunks: Array, dims: Array | None = None) -> Array:
        """Normalized chunks [N, steps, dims] -> ids [N, chunk_slots]: each chunk's BPE tokens, END, then EMPTY.
        A chunk longer than its slots is cut (it decodes without its highest frequencies) and counted, with a
        warning. `dims` is not needed: FAST codes padded dimensions as zeros."""
        self._fitted()
        rows = np.full((len(chunks), self.chunk_slots), EMPTY, np.int64)
        for i, tokens in enumerate(self.encode_batch(chunks)):
            if len(tokens) > self.chunk_slots - 1:
                self.truncated_chunks += 1
                log.warning("a FAST action chunk of %d tokens is cut to %d slots (%d so far in this process); it "
                            "decodes without its highest frequencies: raise sequence.action_tokens",
                            len(tokens), self.chunk_slots - 1, self.truncated_chunks)  # fmt: skip
            tokens = tokens[: self.chunk_slots - 1]
            rows[i, : len(tokens)], rows[i, len(tokens)] = tokens, END
        return torch.from_numpy(rows) if isinstance(chunks, torch.Tensor) else rows

    def decode(self, ids: Array, steps: int, dims: int) -> Array:
        """ids [N, chunk_slots] -> float32 chunks [N, steps, dims]: the tokens before each row's first END (EMPTY
        skipped), decoded as `decode_batch` does."""
        self.slots(steps, dims)
        rows = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids, np.int64)
        tokens = [[t for t in row[: _first(row, END)] if t >= 0] for row in rows.tolist()]
        out = self.decode_batch(tokens)
        return torch.from_numpy(out) if isinstance(ids, torch.Tensor) else out

    def empty_slots(self, dims: torch.Tensor, steps: int) -> torch.Tensor:
        return torch.zeros(len(dims), self.chunk_slots, dtype=torch.bool)  # any slot may hold a token or END

    def expected(self, probs: torch.Tensor, steps: int, dims: int) -> None:
        return None  # a BPE token codes several DCT coefficients: there is no per-slot value to average

    def encode_batch(self, chunks: Array | Sequence[Array]) -> list[list[int]]:
        """Chunks [B, steps, dims] -> B lists of BPE token ids (of any length)."""
        texts = [self._to_text(c) for c in chunks]
        return [e.ids for e in self._fitted().encode_batch(texts, add_special_tokens=False)]

    def _decode(self, tokens: Sequence[int]) -> np.ndarray:
        """Token ids -> float32 chunk [steps, dims] in [-1, 1]. Never raises on malformed tokens; it falls back:

        ids outside the vocabulary are skipped; too few coefficients are padded with zeros (missing high
        frequencies: a smoothed chunk; no tokens give all zeros); too many are truncated; the result is clipped."""
        bpe, steps, dims = self._fitted(), self.steps, self.dims
        pieces = (bpe.id_to_token(int(t)) for t in tokens if 0 <= int(t) < bpe.get_vocab_size())
        q = np.array([ord(c) - CHAR_BASE - self.q_max for c in "".join(p for p in pieces if p)], np.float64)
        q = q[np.abs(q) <= self.q_max]  # drops characters that no fitted vocabulary holds (a hand-edited file)
        coeffs = np.zeros(steps * dims)
        coeffs[: min(len(q), steps * dims)] = q[: steps * dims]
        x = dct_matrix(steps).T @ (coeffs.reshape(steps, dims) / self.scale)  # the inverse DCT: (s, D)
        return np.clip(x, -1, 1).astype(np.float32)

    def decode_batch(self, tokens: Sequence[Sequence[int]]) -> np.ndarray:
        """B token lists -> float32 [B, steps, dims], each decoded as `_decode` does."""
        self._fitted()
        out = [self._decode(t) for t in tokens]
        return np.stack(out) if out else np.zeros((0, self.steps, self.dims), np.float32)

    def save(self, directory: Path) -> None:
        bpe = json.loads(self._fitted().to_str())  # nested JSON, not a string in a string: the file stays readable
        config = {"kind": self.kind, "scale": self.scale, "vocab_size": self.requested_vocab_size,
                  "chunk_slots": self.chunk_slots, "steps": self.steps, "dims": self.dims, "bpe": bpe}
        _write_config(directory, config)

    @classmethod
    def load(cls, directory: Path) -> FastActionTokenizer:
        return _load_as(cls, directory)


def _first(row: list[int], value: int) -> int:
    """The index of the first `value` in row (len(row) when there is none)."""
    return row.index(value) if value in row else len(row)


def build_action_tokenizer(kind: str, **kwargs) -> ActionTokenizer:
    """kind "binning" (n_bins) or "fast" (scale, vocab_size, chunk_slots; call fit before use)."""
    classes = {"binning": BinningActionTokenizer, "fast": FastActionTokenizer}
    if kind not in classes:
        raise UsageError(f"unknown action tokenizer kind {kind!r}; known: {', '.join(classes)}")
    try:
        return classes[kind](**kwargs)
    except TypeError as e:  # an unknown keyword from the config
        raise UsageError(f"action tokenizer {kind!r}: {e}") from e


def load_action_tokenizer(directory: Path) -> ActionTokenizer:
    """Rebuild the tokenizer that `save(directory)` wrote; a loaded FAST tokenizer gives identical tokens."""
    path = Path(directory) / CONFIG
    try:
        config = json.loads(path.read_text())
        if config["kind"] == "binning":
            return BinningActionTokenizer(config["n_bins"])
        if config["kind"] == "fast":
            tok = FastActionTokenizer(config["scale"], config["vocab_size"], config["chunk_slots"])
            tok._set_shape(int(config["steps"]), int(config["dims"]))
            tok._bpe = Tokenizer.from_str(json.dumps(config["bpe"]))
            return tok
    except UsageError:
        raise
    except Exception as e:  # unreadable file, bad JSON, a missing key, or tokenizers' plain Exception for a bad model
        raise UsageError(f"cannot read action tokenizer config {path}: {e!r}") from e
    raise UsageError(f"{path}: unknown action tokenizer kind {config['kind']!r}; known: binning, fast")


def _load_as(cls: type, directory: Path):
    tok = load_action_tokenizer(directory)
    if not isinstance(tok, cls):
        raise UsageError(f"{Path(directory) / CONFIG} holds a {tok.kind!r} action tokenizer, not {cls.kind!r}")
    return tok
