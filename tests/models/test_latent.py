"""The latent image path: windows of stored VAE latents through the sequence, the objective and imagination."""

from __future__ import annotations

import torch
from torch.utils.data import default_collate

from robofm.data.convert import main
from robofm.data.dataset import EpisodeWindowDataset
from robofm.models.config import model_config
from robofm.models.diffusion import FrameDiffusion
from robofm.models.robofm import RobofmModel
from robofm.models.sampling import imagine
from robofm.objectives.objective import Objective, ObjectiveConfig
from robofm.tokenization.build import TokenizerConfig, build_sequence_builder
from robofm.tokenization.sequence import SequenceConfig
from tests.data.test_hdf5_source import write_aloha
from tests.vae_fixture import TINY_VAE_CHANNELS, make_tiny_vae


def test_latent_windows_train_and_imagine(tmp_path, one_thread):
    vae = make_tiny_vae(tmp_path / "vae")
    for i in range(2):
        write_aloha(tmp_path / "aloha" / f"episode_{i}.hdf5", i)
    store = tmp_path / "store"
    assert main(["hdf5", str(tmp_path / "aloha"), "--layout", "aloha", "--out", str(store), "--resolution", "16x16",
                 "--latents", str(vae)]) == 0  # fmt: skip
    ds = EpisodeWindowDataset(store, 2, 2, split=None, latents=True)
    builder = build_sequence_builder(ds, SequenceConfig(window_len=2, stride=2, text_len=8),
                                     TokenizerConfig(image="latent", vae_path=str(vae)))  # fmt: skip
    assert builder.image.input_key == "latents" and builder.patches == 16  # 8x8 latents in 2x2 patches
    batch = default_collate([ds[i] for i in range(2)])
    seq = builder.build(batch)
    assert seq.frame_x0.shape == (2, 2 * 2 * 16, 2 * 2 * TINY_VAE_CHANNELS)
    torch.manual_seed(0)
    model = RobofmModel(model_config(builder, "debug"))
    out = Objective(ObjectiveConfig())(model, seq)
    out["total"].backward()
    assert torch.isfinite(out["total"]) and out["frame"] > 0
    context = {**batch, "latents": batch["latents"][:, :, :1], "state": batch["state"][:, :1],
               "actions": batch["actions"][:, :1]}  # fmt: skip
    patches = imagine(model.eval(), builder, FrameDiffusion(), context, batch["actions"][:, :2], sampler_steps=2)
    latents = builder.image.decode(patches, builder.frame_shape)  # (B, H, C, c, h, w)
    frames = builder.image.to_uint8(latents)
    assert latents.shape == (2, 2, 2, TINY_VAE_CHANNELS, 8, 8) and frames.shape == (2, 2, 2, 16, 16, 3)
