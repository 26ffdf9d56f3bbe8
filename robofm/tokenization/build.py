"""Build the tokenization (a SequenceBuilder) from training data, save it beside a checkpoint and load it back,
and count the tokens an epoch of data gives."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from robofm.errors import UsageError
from robofm.tokenization.layout import Vocab
from robofm.tokenization.sequence import SequenceBuilder, SequenceConfig
from robofm.tokenizers.action import Normalizer, build_action_tokenizer, load_action_tokenizer
from robofm.tokenizers.image import build_image_tokenizer, load_image_tokenizer
from robofm.tokenizers.text import build_text_tokenizer, load_text_tokenizer

CONFIG = "sequence.json"


@dataclass
class TokenizerConfig:
    """text: bytes | hf (text_path: a local tokenizer.json); action: binning (n_bins) | fast (fast_scale,
    fast_vocab_size, fitted on fast_fit_chunks chunks of the training data); image: pixel (patch_size, default 8) | latent
    (vae_path; the store must hold latents); max_embodiments: embodiment-token slots in the vocabulary."""

    text: str = "bytes"
    text_path: str | None = None
    action: str = "binning"
    n_bins: int = 256
    fast_scale: float = 10.0
    fast_vocab_size: int = 1024
    fast_fit_chunks: int = 2000
    image: str = "pixel"
    patch_size: int | None = None  # None: 8 pixels, or 2 latent cells
    vae_path: str | None = None
    max_embodiments: int = 16


def build_sequence_builder(dataset, seq: SequenceConfig, tok: TokenizerConfig) -> SequenceBuilder:
    """Tokenizers, normalizers and layout for an EpisodeWindowDataset (statistics of all its stores, merged per
    embodiment). A FAST tokenizer is fitted here on action chunks drawn from the dataset; with
    seq.action_tokens 0 its chunks get 1.25x the slots of the longest fitted chunk (longer ones are cut and
    decode through the tokenizer's fallback)."""
    state_norm, action_norm = dataset_normalizers(dataset, seq)
    embodiments = sorted({e for st in dataset.stores for e in st.manifest["embodiments"]})
    image = build_image_tokenizer(tok.image, tok.patch_size, tok.vae_path)
    if image.input_key == "latents":
        frame_shape = tuple(dataset.stores[0].manifest["latents"]["shape"])
    else:
        frame_shape = (*dataset.frame_size, 3)
    if tok.action == "fast":
        actions = build_action_tokenizer("fast", scale=tok.fast_scale, vocab_size=tok.fast_vocab_size,
                                         chunk_slots=seq.action_tokens)  # fmt: skip
        actions.fit(_action_chunks(dataset, action_norm, tok.fast_fit_chunks))
        seq = replace(seq, action_tokens=actions.chunk_slots)  # the slots it uses, as sequence.json records them
    else:
        actions = build_action_tokenizer("binning", n_bins=tok.n_bins)
    text = build_text_tokenizer(tok.text, tok.text_path)
    vocab = Vocab(text.vocab_size, actions.vocab_size, tok.max_embodiments)
    return SequenceBuilder(seq, text=text, actions=actions, image=image, state_norm=state_norm,
                           action_norm=action_norm, vocab=vocab, embodiments=embodiments, cameras=dataset.cameras,
                           frame_shape=frame_shape, state_dim=dataset.state_dim,
                           action_dim=max(dataset.action_dim, 1))  # fmt: skip


def dataset_normalizers(dataset, seq: SequenceConfig) -> tuple[Normalizer, Normalizer]:
    """(state, action) normalizers of all the dataset's stores, merged per embodiment, after checking that the
    dataset's windows are the sequence's."""
    if (dataset.window_len, dataset.stride) != (seq.window_len, seq.stride):
        raise UsageError(f"the dataset gives windows of {dataset.window_len} steps at stride {dataset.stride}; the "
                         f"sequence expects {seq.window_len} at {seq.stride}")  # fmt: skip
    stats = [st.stats for st in dataset.stores]
    return (Normalizer.merge([Normalizer.from_stats(s, "state") for s in stats]),
            Normalizer.merge([Normalizer.from_stats(s, "action") for s in stats]))  # fmt: skip


def _action_chunks(dataset, norm: Normalizer, n: int):
    """Up to n normalized action chunks [s, Da] of the dataset's windows (action-free windows skipped)."""
    rng = np.random.default_rng(0)
    for i in rng.choice(len(dataset), size=min(n, len(dataset)), replace=False):
        item = dataset[int(i)]
        if item["action_mask"].any():
            yield from norm.normalize(item["actions"], item["embodiment"]).numpy()


def save_sequence_builder(builder: SequenceBuilder, directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, tok in (("text", builder.text), ("action", builder.actions), ("image", builder.image)):
        tok.save(directory / f"{name}_tokenizer")
    config = {
        "sequence": asdict(builder.cfg),
        "max_embodiments": builder.vocab.max_embodiments,
        "embodiments": builder.embodiments,
        "cameras": builder.cameras,
        "frame_shape": list(builder.frame_shape),
        "state_dim": builder.state_dim,
        "action_dim": builder.action_dim,
        "state_norm": builder.state_norm.state_dict(),
        "action_norm": builder.action_norm.state_dict(),
    }
    (directory / CONFIG).write_text(json.dumps(config, indent=1))


def load_sequence_builder(directory: str | Path) -> SequenceBuilder:
    directory = Path(directory)
    try:
        config = json.loads((directory / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {directory / CONFIG}: {e}") from e
    text = load_text_tokenizer(directory / "text_tokenizer")
    actions = load_action_tokenizer(directory / "action_tokenizer")
    vocab = Vocab(text.vocab_size, actions.vocab_size, config["max_embodiments"])
    return SequenceBuilder(SequenceConfig(**config["sequence"]), text=text, actions=actions,
                           image=load_image_tokenizer(directory / "image_tokenizer"),
                           state_norm=Normalizer.from_state_dict(config["state_norm"]),
                           action_norm=Normalizer.from_state_dict(config["action_norm"]), vocab=vocab,
                           embodiments=config["embodiments"], cameras=config["cameras"],
                           frame_shape=tuple(config["frame_shape"]), state_dim=config["state_dim"],
                           action_dim=config["action_dim"])  # fmt: skip


@dataclass
class EpochTokens:
    """What one epoch of a dataset holds for a tokenization: windows x tokens per sample."""

    windows: int
    tokens_per_sample: int
    too_short: int  # episodes shorter than one window, never sampled

    @property
    def tokens(self) -> int:
        return self.windows * self.tokens_per_sample


def epoch_tokens(dataset, builder: SequenceBuilder) -> EpochTokens:
    """The windows of one epoch of an EpisodeWindowDataset (every rank's) and the tokens of one sample's sequence
    (with the configured NOISY blocks): robofm-plan, the training plan and the dataset card all count this way."""
    noisy = builder.cfg.noisy
    blocks = {"all": builder.cfg.window_len, "last": 1}.get(noisy) or int(noisy)
    per_sample = len(builder.layout(tuple(range(1, blocks + 1))))
    windows = int(sum(c[-1] for c in dataset.cum_windows if len(c)))
    return EpochTokens(windows, per_sample, len(dataset.too_short))
