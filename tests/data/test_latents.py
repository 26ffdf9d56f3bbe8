"""Latents in the store: robofm-convert --latents, the manifest record, windows with latents, and mismatches."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from rich.console import Console

from robofm.data.convert import ConvertOptions, main
from robofm.data.convert import convert as run_convert
from robofm.data.dataset import EpisodeWindowDataset
from robofm.data.store import EpisodeStore, StoreWriter
from robofm.errors import StoreError, UsageError
from robofm.tokenizers.image import LatentTokenizer
from tests.data.test_convert import FakeSource
from tests.data.test_hdf5_source import write_aloha
from tests.vae_fixture import TINY_VAE_CHANNELS, make_tiny_vae

CAMERAS = ["cam_high", "cam_left_wrist"]


@pytest.fixture(scope="module")
def vae(tmp_path_factory) -> Path:
    return make_tiny_vae(tmp_path_factory.mktemp("vae") / "tiny")


@pytest.fixture(scope="module")
def aloha(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("aloha") / "sim"
    for i in range(2):
        write_aloha(src / f"episode_{i}.hdf5", i)
    return src


def convert(src: Path, out: Path, *extra: str) -> int:
    return main(["hdf5", str(src), "--layout", "aloha", "--out", str(out), "--resolution", "16x16", *extra])


@pytest.fixture(scope="module")
def latent_store(tmp_path_factory, aloha, vae) -> Path:
    out = tmp_path_factory.mktemp("stores") / "latent"
    assert convert(aloha, out, "--latents", str(vae), "--workers", "2") == 0
    return out


def test_convert_stores_the_latents_of_the_stored_frames(latent_store, vae):
    store = EpisodeStore(latent_store)
    tok = LatentTokenizer(vae)
    assert store.latents == {"vae_path": str(vae.resolve()), "shape": [TINY_VAE_CHANNELS, 8, 8],
                             "scaling_factor": tok.scaling_factor}  # fmt: skip
    assert json.loads((latent_store / "manifest.json").read_text())["latents"] == store.latents
    assert len(store.episodes) == 2
    for info in store.episodes:
        arrays = store.arrays(info.id)
        assert sorted(arrays.latents) == sorted(arrays.frames) == CAMERAS  # frames are kept too
        for cam in CAMERAS:
            lat = arrays.latents[cam]
            assert lat.dtype == np.float16 and lat.shape == (info.length, TINY_VAE_CHANNELS, 8, 8)
            assert lat.chunks == arrays.frames[cam].chunks  # laid out like the frames
            expected = tok.encode_frames(torch.from_numpy(arrays.frames[cam][:]))
            np.testing.assert_allclose(lat[:].astype(np.float32), expected.float().numpy(), rtol=1e-2, atol=1e-3)
    episode = store.read_episode(store.episodes[0].id)
    assert episode.latents["cam_high"].shape == (24, TINY_VAE_CHANNELS, 8, 8)


def test_windows_carry_latents_aligned_with_frames(latent_store, vae):
    ds = EpisodeWindowDataset(latent_store, window_len=3, stride=2, split=None, latents=True)
    plain = EpisodeWindowDataset(latent_store, window_len=3, stride=2, split=None)
    tok = LatentTokenizer(vae)
    for i in range(3):
        item = ds[i]
        assert item["latents"].shape == (2, 4, TINY_VAE_CHANNELS, 8, 8) and item["latents"].dtype == torch.float16
        assert "latents" not in plain[i] and torch.equal(plain[i]["frames"], item["frames"])  # nothing else changes
        for c in range(len(CAMERAS)):
            expected = tok.encode_frames(item["frames"][c])
            torch.testing.assert_close(item["latents"][c].float(), expected.float(), rtol=1e-2, atol=1e-3)


def test_store_without_latents_is_refused_with_the_fix(store_factory):
    root = store_factory(n=2)
    with pytest.raises(UsageError, match=f"{root} holds no latents: convert it with .*--latents VAE_DIR"):
        EpisodeWindowDataset(root, 2, 1, split=None, latents=True)


def test_append_needs_the_same_latents_setting(tmp_path, aloha, vae, latent_store, capsys):
    def error() -> str:  # rich wraps the message to the terminal's width
        return " ".join(capsys.readouterr().err.split())

    plain = tmp_path / "plain"
    assert convert(aloha, plain) == 0
    assert EpisodeStore(plain).latents is None and not any("latents" in g for g in _groups(plain))
    assert convert(aloha, plain, "--append", "--latents", str(vae)) == 2
    assert f"stores no latents but this conversion has --latents {vae.resolve()}" in error()
    assert convert(aloha, latent_store, "--append") == 2
    assert f"stores latents of the VAE at {vae.resolve()} but this conversion has no --latents" in error()
    assert convert(aloha, latent_store, "--append", "--latents", str(tmp_path / "other")) == 2
    assert "no AutoencoderKL there" in error()
    with pytest.raises(StoreError, match="cannot append episodes with latents None to a store with latents"):
        StoreWriter(latent_store, fps=50, cameras={c: (16, 16) for c in CAMERAS}, mode="append")
    assert convert(aloha, latent_store, "--append", "--latents", str(vae)) == 0  # the same setting: nothing new
    assert len(EpisodeStore(latent_store).episodes) == 2


def _groups(root: Path) -> list[h5py.Group]:
    store = EpisodeStore(root)
    return [store.group(e.id) for e in store.episodes]


class TwoSizeSource(FakeSource):
    def load(self, ref, frame_size=None, resize_mode="crop"):
        ep = super().load(ref, frame_size, resize_mode)
        if ref.index == "1":  # a larger episode: at --resolution native it is resized to the first one's size
            ep.frames = {c: np.repeat(np.repeat(fr, 2, axis=1), 2, axis=2) for c, fr in ep.frames.items()}
        return ep


def test_native_resolution_encodes_the_frames_as_resized(tmp_path, vae):
    opts = ConvertOptions(out=tmp_path / "store", resolution=None, latents=vae)
    assert run_convert(TwoSizeSource(["ok", "ok"]), opts, Console(quiet=True)).kept == 2
    store = EpisodeStore(tmp_path / "store")
    assert store.latents["shape"] == [TINY_VAE_CHANNELS, 6, 6]
    tok = LatentTokenizer(vae)
    arrays = store.arrays(store.episodes[1].id)
    expected = tok.encode_frames(torch.from_numpy(arrays.frames["front"][:]))
    np.testing.assert_allclose(arrays.latents["front"][:].astype(np.float32), expected.float().numpy(), atol=1e-3)
