"""Model sizes and the shapes a model needs from its tokenizers and data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from robofm.errors import UsageError

# Width, depth and heads of each size; the FFN is SwiGLU at 8/3 of the width (rounded up to a multiple of 64),
# so a block holds ~12 * dim^2 weights, as a GELU block with a 4x MLP.
SIZES: dict[str, dict[str, int]] = {
    "debug": {"dim": 64, "depth": 2, "heads": 4},  # ~0.3M parameters: tests
    "tiny": {"dim": 128, "depth": 4, "heads": 4},  # ~1M
    "mini": {"dim": 192, "depth": 6, "heads": 6},  # ~3M
    "small": {"dim": 320, "depth": 10, "heads": 5},  # ~13M: the CPU demo
    "base": {"dim": 768, "depth": 14, "heads": 12},  # ~100M
    "large": {"dim": 1024, "depth": 24, "heads": 16},  # ~300M
    "1b": {"dim": 2048, "depth": 20, "heads": 16},  # ~1B
}
SHAPE = ("dim", "depth", "heads", "ffn_dim")  # what `model.KEY=...` may set over a size's preset


def shape_of(size: str, **overrides: int | None) -> dict[str, int]:
    """The dim, depth, heads and ffn_dim of `size`, with each override that is not None in place of the preset's
    (ffn_dim 0: 8/3 of dim). UsageError naming the `model.*` key for an unknown size, a non-positive value, or a
    dim that does not split into heads of an even size (rotary positions rotate pairs of channels)."""
    if size not in SIZES:
        raise UsageError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    for key, value in given.items():
        if not isinstance(value, int) or value < (0 if key == "ffn_dim" else 1):
            raise UsageError(f"model.{key} must be an integer >= {0 if key == 'ffn_dim' else 1}, not {value!r}")
    shape = {"ffn_dim": 0, **SIZES[size], **given}
    dim, heads = shape["dim"], shape["heads"]
    if dim % heads or (dim // heads) % 2:
        keys = " and ".join(f"model.{k}={shape[k]}" for k in ("dim", "heads") if k in given) or f"model.size={size}"
        fits = [h for h in range(1, dim // 2 + 1) if dim % h == 0 and (dim // h) % 2 == 0]
        raise UsageError(
            f"{keys}: model.dim must split into model.heads heads of an even size, and {dim} / {heads} = "
            f"{dim / heads:g} is not; heads that fit dim {dim}: {', '.join(map(str, fits[:12])) or 'none (odd dim)'}"
        )
    return shape


@dataclass
class ModelConfig:
    """A model: its backbone size, and the input/output shapes set by the tokenizers and the data.

    vocab_size: the shared vocabulary (special, embodiment, text and action tokens; see sequence.Vocab)
    patch_dim: values per image patch (p*p*3 pixels or p*p*C latents); state_dim: the largest state dimension
    max_cameras, max_patches: camera and patch-position embedding rows (patches per frame of one camera)
    """

    size: str = "debug"
    dim: int = 64
    depth: int = 2
    heads: int = 4
    ffn_dim: int = 0  # 0: 8/3 of dim, rounded up to a multiple of 64
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attention: str = "sdpa"  # sdpa (boolean mask, portable) | flex (FlexAttention block mask)
    vocab_size: int = 0
    patch_dim: int = 0
    state_dim: int = 0
    max_cameras: int = 4
    max_patches: int = 256
    action_chunk_dim: int = 0  # stride x action_dim: the values of one action chunk (the NOISY condition's input)
    adaln: bool = False  # modulate NOISY tokens in every block from their diffusion time and action chunk
    prev_frame_input: bool = False  # add each NOISY token's patch of the frame before to its input (older exports: off)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise UsageError(f"model.dim {self.dim} must split into {self.heads} heads of an even size")
        if self.adaln and not self.action_chunk_dim:
            raise UsageError("model.adaln needs the action chunk's size (action_chunk_dim, set from the tokenization)")
        if self.attention not in ("sdpa", "flex"):
            raise UsageError(f"model.attention must be sdpa or flex, not {self.attention!r}")
        if not self.ffn_dim:
            self.ffn_dim = -(-8 * self.dim // 3 // 64) * 64

    @classmethod
    def sized(cls, size: str, **kwargs) -> ModelConfig:
        """A config of one of SIZES, with the data-dependent fields (vocab_size, patch_dim, ...) in kwargs. Shape
        keys in kwargs (dim, depth, heads, ffn_dim) replace the preset's unless None (see shape_of). `size` stays
        the preset's name; dim, depth, heads and ffn_dim hold the real shape, and model.json records them."""
        shape = shape_of(size, **{k: kwargs.pop(k) for k in SHAPE if k in kwargs})
        return cls(size=size, **shape, **kwargs)

    def to_dict(self) -> dict:
        return asdict(self)

    def expected_parameters(self) -> int:
        """Parameter count from the config alone (tested against the built model)."""
        d = self.dim
        block = 4 * d * d + 3 * d * self.ffn_dim + 2 * d + 2 * (d // self.heads)  # attention, SwiGLU, norms
        embed = (self.vocab_size + 6 + self.max_cameras + self.max_patches) * d  # tokens, modalities, cameras, patches
        inputs = (self.patch_dim + 2 * self.state_dim) * d + (256 * d + d * d)  # patch and state proj, time MLP
        heads = d * self.vocab_size + d * self.patch_dim + d  # token head, frame head, final norm
        if self.adaln:  # per block 6 modulations (weights and biases); the action chunk's input projection
            block += 6 * d * d + 6 * d
            inputs += 2 * self.action_chunk_dim * d
        if self.prev_frame_input:  # the previous patch's input projection
            inputs += self.patch_dim * d
        return self.depth * block + embed + inputs + heads


def model_config(builder, size: str, **overrides) -> ModelConfig:
    """A model of `size` whose vocabulary, patch, state and camera shapes fit a SequenceBuilder."""
    return ModelConfig.sized(size, vocab_size=builder.vocab.size, patch_dim=builder.image.patch_dim(),
                             state_dim=builder.state_dim, max_cameras=max(len(builder.cameras), 1),
                             max_patches=builder.patches, action_chunk_dim=builder.cfg.stride * builder.action_dim,
                             **overrides)  # fmt: skip
