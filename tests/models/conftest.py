"""A tiny store, dataset, builder and debug model for model tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from robofm.data.dataset import EpisodeWindowDataset
from robofm.models.config import model_config
from robofm.models.robofm import RobofmModel
from robofm.tokenization.build import TokenizerConfig, build_sequence_builder
from robofm.tokenization.sequence import SequenceConfig
from tests.conftest import indexed_episode, write_store

WINDOW, STRIDE = 3, 2
# the ways a NOISY token is conditioned (model.adaln, model.prev_frame_input): every rule must hold for each
CONDITIONINGS = {"plain": {}, "adaln": {"adaln": True}, "prev": {"prev_frame_input": True},
                 "adaln+prev": {"adaln": True, "prev_frame_input": True}}  # fmt: skip
each_conditioning = pytest.mark.parametrize("cond", list(CONDITIONINGS.values()), ids=list(CONDITIONINGS))


def textured_episode(length: int, seed: int, **kw):
    """indexed_episode with random frames and smooth actions (something to learn in every pixel and action)."""
    ep = indexed_episode(length, seed=seed, **kw)
    rng = np.random.default_rng(seed)
    ep.frames = {c: rng.integers(0, 256, fr.shape, dtype=np.uint8) for c, fr in ep.frames.items()}
    if ep.action is not None:
        t = np.arange(length)[:, None]
        ep.action = np.sin(t / 5 + rng.uniform(0, 6, ep.action.shape[1])).astype(np.float32)
    return ep


def make_store(root: Path, n: int = 4, length: int = 16, val_fraction: float = 0.0, **kw) -> Path:
    return write_store(root, [textured_episode(length, seed=i, **kw) for i in range(n)], val_fraction=val_fraction)


def make_builder(stores, *, noisy="all", **tok) -> tuple[EpisodeWindowDataset, object]:
    ds = EpisodeWindowDataset(stores, WINDOW, STRIDE, split=None)
    seq = SequenceConfig(window_len=WINDOW, stride=STRIDE, noisy=noisy, text_len=8)
    tok = TokenizerConfig(**{"patch_size": 4, "fast_vocab_size": 300, "fast_fit_chunks": 64, **tok})
    return ds, build_sequence_builder(ds, seq, tok)


def batch_of(ds, n: int = 3) -> dict:
    return default_collate([ds[i] for i in range(n)])


def make_model(builder, seed: int = 0, **overrides) -> RobofmModel:
    torch.manual_seed(seed)
    model = RobofmModel(model_config(builder, "debug", **overrides))
    torch.nn.init.normal_(model.frame_head.weight, std=0.02)  # a zero head would hide what reaches NOISY outputs
    for block in model.backbone.blocks:  # and so would zero NOISY modulations (adaln)
        if block.ada is not None:
            torch.nn.init.normal_(block.ada.weight, std=0.02)
    return model.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(dataset, builder) over 4 episodes of 16 frames, 2 cameras of 8x8, state 3, action 2."""
    return make_builder(make_store(tmp_path_factory.mktemp("tiny") / "store"))



@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    """(dataset, builder) like `tiny`'s with FAST action tokens."""
    return make_builder(make_store(tmp_path_factory.mktemp("fast") / "store"), action="fast")
