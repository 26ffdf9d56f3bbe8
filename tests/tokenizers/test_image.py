"""Image tokenizers: patchify/unpatchify round trips, patch layout, the VAE path, saved configs, bad input."""

import pytest
import torch

from robofm.errors import UsageError
from robofm.tokenizers.image import LatentTokenizer, PixelTokenizer, build_image_tokenizer, load_image_tokenizer
from tests.vae_fixture import TINY_VAE_CHANNELS, TINY_VAE_DOWNSAMPLE, make_tiny_vae


@pytest.fixture(scope="module")
def latent_tokenizer(tmp_path_factory):
    return LatentTokenizer(make_tiny_vae(tmp_path_factory.mktemp("vae")), patch_size=2)


def random_frames(*shape) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_pixel_round_trip_is_exact_over_leading_dims():
    tok = PixelTokenizer(patch_size=4)
    frames = random_frames(2, 3, 5, 8, 12, 3)  # [B, C, T, H, W, 3]
    patches = tok.encode(frames)
    assert patches.shape == (2, 3, 5, 6, 48) and patches.dtype == torch.float32
    assert patches.min() >= -1 and patches.max() <= 1
    assert tok.patch_dim() == 48 and tok.grid((8, 12, 3)) == (2, 3)
    decoded = tok.decode(patches, (8, 12, 3))
    assert decoded.shape == (2, 3, 5, 8, 12, 3) and decoded.dtype == torch.float32
    assert torch.equal(tok.to_uint8(decoded), frames)


def test_pixel_patches_are_row_major_blocks():
    tok = PixelTokenizer(patch_size=4)
    frames = random_frames(8, 12, 3)
    patches = tok.encode(frames)
    scaled = frames.float() / 127.5 - 1
    assert torch.equal(patches[0], scaled[:4, :4].reshape(-1))  # top-left block, pixels row-major, channels last
    assert torch.equal(patches[1], scaled[:4, 4:8].reshape(-1))  # its right neighbour
    assert torch.equal(patches[3], scaled[4:8, :4].reshape(-1))  # first block of the second row


def test_pixel_bad_input_is_a_usage_error():
    tok = PixelTokenizer(patch_size=8)
    with pytest.raises(UsageError, match="frames of 12x16 do not divide into 8x8 patches"):
        tok.encode(random_frames(12, 16, 3))
    with pytest.raises(UsageError, match="uint8"):
        tok.encode(torch.zeros(16, 16, 3))
    with pytest.raises(UsageError, match=r"expected patches \[..., 4, 192\]"):
        tok.decode(torch.zeros(3, 192), (16, 16, 3))


def test_latent_patch_round_trip_is_exact(latent_tokenizer):
    tok = latent_tokenizer
    latents = torch.randn(2, 3, TINY_VAE_CHANNELS, 6, 4).half()  # [B, T, C, h, w] as stored
    patches = tok.encode(latents)
    assert patches.shape == (2, 3, 6, 16) and patches.dtype == torch.float32 and tok.patch_dim() == 16
    assert torch.equal(patches[0, 0, 1], latents[0, 0, :, :2, 2:].float().permute(1, 2, 0).reshape(-1))
    decoded = tok.decode(patches, (TINY_VAE_CHANNELS, 6, 4))
    assert decoded.dtype == torch.float32 and torch.equal(decoded, latents.float())
    with pytest.raises(UsageError, match="latents of 5x4 do not divide"):
        tok.grid((TINY_VAE_CHANNELS, 5, 4))
    with pytest.raises(UsageError, match="latents have 3 channels"):
        tok.grid((3, 6, 4))


def test_latent_frames_go_through_the_vae(latent_tokenizer):
    tok = latent_tokenizer
    frames = random_frames(3, 16, 12, 3)
    latents = tok.encode_frames(frames)
    f = TINY_VAE_DOWNSAMPLE
    assert latents.shape == (3, TINY_VAE_CHANNELS, 16 // f, 12 // f) and latents.dtype == torch.float16
    assert torch.equal(tok.encode_frames(frames), latents)  # the posterior's mean: deterministic
    back = tok.decode_frames(latents)
    assert back.shape == (3, 16, 12, 3) and back.dtype == torch.uint8
    many = tok.to_uint8(latents.reshape(1, 3, *latents.shape[1:]))
    assert many.shape == (1, 3, 16, 12, 3) and torch.equal(many[0], back)


def test_saved_config_builds_the_same_tokenizer(tmp_path, latent_tokenizer):
    PixelTokenizer(4).save(tmp_path / "pixel")
    pixel = load_image_tokenizer(tmp_path / "pixel")
    assert isinstance(pixel, PixelTokenizer) and pixel.patch_size == 4 and pixel.input_key == "frames"
    latent_tokenizer.save(tmp_path / "latent")
    latent = load_image_tokenizer(tmp_path / "latent")
    assert isinstance(latent, LatentTokenizer) and latent.input_key == "latents"
    assert latent.vae_path == latent_tokenizer.vae_path and latent.patch_size == 2
    assert latent.scaling_factor == latent_tokenizer.scaling_factor
    with pytest.raises(UsageError, match="no image tokenizer was saved"):
        load_image_tokenizer(tmp_path / "nothing")


def test_build_errors_name_what_is_missing(tmp_path):
    assert build_image_tokenizer().patch_size == 8
    with pytest.raises(UsageError, match="needs vae_path"):
        build_image_tokenizer("latent")
    with pytest.raises(UsageError, match=f"{tmp_path / 'nope'}: no AutoencoderKL there"):
        build_image_tokenizer("latent", vae_path=tmp_path / "nope")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(UsageError, match="cannot load a diffusers AutoencoderKL"):
        LatentTokenizer(tmp_path / "broken")
    with pytest.raises(UsageError, match="unknown image tokenizer 'jpeg'"):
        build_image_tokenizer("jpeg")
