import shutil

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from robofm.data.dataset import EpisodeWindowDataset, StoreSpec
from robofm.data.episode import content_hash
from robofm.data.store import StoreWriter
from robofm.errors import UsageError
from robofm.sim.tasks import EPISODE_KINDS, NO_KIND
from tests.conftest import indexed_episode, write_store


def test_window_holds_the_frames_state_and_actions_of_its_steps(store_factory):
    ds = EpisodeWindowDataset(store_factory(n=3, length=30), window_len=4, stride=3, split=None, seed=1)
    for i in range(50):
        item = ds[i]
        idx = item["frame_index"].numpy()
        start = idx[0]
        np.testing.assert_array_equal(idx, start + 3 * np.arange(5))  # K + 1 frames, the last is the target
        assert item["frames"].shape == (2, 5, 8, 8, 3) and item["frames"].dtype == torch.uint8
        np.testing.assert_array_equal(item["frames"][0, :, 0, 0, 0].numpy(), idx % 256)
        np.testing.assert_array_equal(item["frames"][1, :, 3, 3, 2].numpy(), (idx + 100) % 256)
        np.testing.assert_array_equal(item["state"][:, 0].numpy(), idx[:4])  # state at the K observation steps
        # the s actions between step k and k+1 are those of frames idx[k] .. idx[k] + s - 1
        expected = idx[:4, None] + np.arange(3)[None]
        np.testing.assert_array_equal(item["actions"][..., 0].numpy(), expected)
        np.testing.assert_array_equal(item["actions"][..., 1].numpy(), -expected)
        seed = int(item["state"][0, 1])
        assert item["episode_id"] == f"ep-{seed:06d}" and item["task"] == "pick"
        assert item["action_mask"].all()
        assert idx[-1] < 30


def _all_indices(loader):
    return [(b["episode_id"][j], int(b["frame_index"][j, 0])) for b in loader for j in range(len(b["episode_id"]))]


def test_sampling_is_deterministic_across_worker_counts_and_epochs(store_factory):
    root = store_factory(n=4, length=25)
    ds = EpisodeWindowDataset(root, window_len=3, stride=2, split=None, seed=7, samples_per_epoch=40)
    single = _all_indices(DataLoader(ds, batch_size=5, num_workers=0))
    two = _all_indices(DataLoader(ds, batch_size=5, num_workers=2))
    assert single == two
    again = _all_indices(DataLoader(EpisodeWindowDataset(root, 3, 2, split=None, seed=7, samples_per_epoch=40),
                                    batch_size=5, num_workers=2))  # fmt: skip
    assert again == single
    ds.set_epoch(1)
    assert _all_indices(DataLoader(ds, batch_size=5)) != single
    other_seed = EpisodeWindowDataset(root, 3, 2, split=None, seed=8, samples_per_epoch=40)
    assert _all_indices(DataLoader(other_seed, batch_size=5)) != single


def test_ranks_draw_disjoint_shares_of_the_epoch(store_factory):
    root = store_factory(n=2, length=40)
    full = EpisodeWindowDataset(root, 2, 1, split=None, seed=3, samples_per_epoch=12)
    parts = [EpisodeWindowDataset(root, 2, 1, split=None, seed=3, samples_per_epoch=12, rank=r, world_size=3)
             for r in range(3)]  # fmt: skip
    assert [len(p) for p in parts] == [4, 4, 4]
    merged = [full.locate(i)[1:] for i in range(12)]
    for r, p in enumerate(parts):
        assert [(info.id, start) for _, info, start in map(p.locate, range(4))] == [
            (info.id, start) for info, start in merged[r::3]
        ]


def test_mixture_respects_weights_and_keeps_each_store_embodiment(tmp_path):
    a = write_store(tmp_path / "a", [indexed_episode(20, seed=i, embodiment="arm") for i in range(3)])
    b = write_store(tmp_path / "b", [indexed_episode(20, seed=10 + i, embodiment="biarm", state_dim=5, action_dim=4)
                                     for i in range(3)])  # fmt: skip
    ds = EpisodeWindowDataset([StoreSpec(a, 1.0), StoreSpec(b, 3.0)], 2, 2, split=None, seed=0, samples_per_epoch=2000)
    stores = np.array([ds.locate(i)[0] for i in range(len(ds))])
    share_b = stores.mean()
    assert abs(share_b - 0.75) < 4 * np.sqrt(0.75 * 0.25 / 2000)  # within 4 standard errors
    item_a = next(ds[i] for i in range(20) if ds.locate(i)[0] == 0)
    item_b = next(ds[i] for i in range(20) if ds.locate(i)[0] == 1)
    assert item_a["embodiment"] == "arm" and item_b["embodiment"] == "biarm"
    assert item_a["state"].shape == item_b["state"].shape == (2, 5)  # padded to the mixture's largest dims
    assert item_a["state_mask"].tolist() == [True] * 3 + [False] * 2 and item_b["state_mask"].all()
    assert item_a["action_mask"].tolist() == [True, True, False, False]
    assert (item_a["actions"][..., 2:] == 0).all()
    assert ds.stats(0, "arm")["state"]["max"][1] == 2.0 and ds.stats(1, "biarm")["state"]["max"][1] == 12.0


def test_mixture_by_frames_or_episodes_and_the_report_of_what_is_drawn(tmp_path):
    """Store a: 2 long episodes (many windows); store b: 6 short ones. By frames a dominates, by episodes b does;
    mixture() reports the shares the sampler really draws."""
    a = write_store(tmp_path / "a", [indexed_episode(60, seed=i) for i in range(2)])
    b = write_store(tmp_path / "b", [indexed_episode(10, seed=10 + i) for i in range(6)])
    by_frames = EpisodeWindowDataset([a, b], 2, 2, split=None, samples_per_epoch=4000)
    by_episodes = EpisodeWindowDataset([a, b], 2, 2, split=None, samples_per_epoch=4000, mix_by="episodes")
    frames_mix, episodes_mix = by_frames.mixture(), by_episodes.mixture()
    assert [m["windows"] for m in frames_mix] == [2 * 56, 6 * 6] and [m["episodes"] for m in frames_mix] == [2, 6]
    assert frames_mix[0]["weight"] == pytest.approx(112 / 148) and episodes_mix[0]["weight"] == pytest.approx(0.25)
    for mix, ds in ((frames_mix, by_frames), (episodes_mix, by_episodes)):
        drawn = np.mean([ds.locate(i)[0] == 0 for i in range(len(ds))])
        assert mix[0]["sampled"] == pytest.approx(drawn) and abs(drawn - mix[0]["weight"]) < 0.03
    with pytest.raises(UsageError, match="data.mix_by must be frames or episodes"):
        EpisodeWindowDataset([a, b], 2, 2, split=None, mix_by="hours")


def test_short_episodes_are_reported_and_splits_honoured(tmp_path, caplog):
    eps = [indexed_episode(30, seed=0), indexed_episode(5, seed=1)]
    root = write_store(tmp_path / "s", eps)
    ds = EpisodeWindowDataset(root, 4, 2, split="train")
    assert ds.too_short == [(str(root), "ep-000001", 5)]
    assert "shorter than a window" in caplog.text
    assert {ds.locate(i)[1].id for i in range(len(ds))} == {"ep-000000"}
    with pytest.raises(UsageError, match="no episode in split 'val'"):
        EpisodeWindowDataset(root, 4, 2, split="val")
    with pytest.raises(UsageError, match="camera 'top' is in none of the stores"):
        EpisodeWindowDataset(root, 4, 2, cameras=["top"])


def test_action_free_episodes_have_an_empty_action_mask(tmp_path):
    root = write_store(tmp_path / "s", [indexed_episode(12, seed=0), indexed_episode(12, seed=1, with_action=False)])
    ds = EpisodeWindowDataset(root, 2, 2, split=None)
    item = next(ds[i] for i in range(len(ds)) if ds.locate(i)[1].id == "ep-000001")
    assert not item["action_mask"].any() and (item["actions"] == 0).all() and item["actions"].shape == (2, 2, 2)


def test_random_shift_moves_each_camera_alike_in_every_frame_of_a_window():
    """data.shift: each camera's view moves by up to `pad` pixels (edges repeated), one move for the whole window,
    so the motion between its frames is unchanged; the same generator state gives the same move."""
    from robofm.data.dataset import random_shift

    y, x = np.mgrid[0:12, 0:12]
    t = np.arange(4)[:, None, None]
    one = (20 * y + x + 7 * t).astype(np.uint8)  # [T, H, W]: every pixel of every frame tells where it is
    frames = torch.from_numpy(np.stack([one, one + 3])[..., None].repeat(3, -1))  # [C=2, T, H, W, 3]
    out = random_shift(frames, 2, np.random.default_rng(5))
    assert out.shape == frames.shape and out.dtype == torch.uint8
    assert torch.equal(out, random_shift(frames, 2, np.random.default_rng(5)))
    for c in range(2):
        moves = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(out[c, :, 2:10, 2:10], frames[c, :, 2 + dy : 10 + dy, 2 + dx : 10 + dx])]  # fmt: skip
        assert len(moves) == 1  # one move, shared by all 4 frames
    assert not torch.equal(out, frames) or not torch.equal(random_shift(frames, 2, np.random.default_rng(6)), frames)


def test_training_windows_are_shifted_by_their_sample_key_and_validation_is_not(store_factory):
    from robofm.data.dataset import random_shift

    store = store_factory(n=2, length=20)
    plain = EpisodeWindowDataset(store, window_len=2, stride=2, split=None, seed=3)
    shifted = EpisodeWindowDataset(store, window_len=2, stride=2, split=None, seed=3, shift=2)
    for i in range(5):
        key = plain.sample_key(i)
        assert torch.equal(shifted[i]["frames"], random_shift(plain[i]["frames"], 2, np.random.default_rng(key)))
    with pytest.raises(UsageError, match="shift=-1"):
        EpisodeWindowDataset(store, window_len=2, stride=2, split=None, shift=-1)


def test_compressed_and_plain_shards_give_identical_items_alone_or_in_batches(tmp_path):
    """Plain shards are read at their byte offsets, compressed ones through h5py: the items are the same, and the
    batch the DataLoader fetches with __getitems__ holds the items __getitem__ gives one by one."""
    eps = [indexed_episode(25, seed=i) for i in range(3)]
    roots = {}
    for compression in ("none", "lzf"):
        roots[compression] = tmp_path / compression
        cams = {c: (8, 8) for c in eps[0].frames}
        writer = StoreWriter(roots[compression], fps=10.0, cameras=cams, shard_size_mb=0.001, compression=compression)
        for ep in eps:
            writer.add(ep, content_hash(ep), "train")
        writer.close()
    roots["chunked"] = tmp_path / "chunked"  # as stores before contiguous frames were: a chunk per frame, unfiltered
    shutil.copytree(roots["none"], roots["chunked"])
    for shard in (roots["chunked"] / "shards").glob("*.h5"):
        with h5py.File(shard, "a") as f:
            for ep_id in f:
                for cam in list(f[ep_id]["frames"]):
                    data = f[ep_id]["frames"][cam][:]
                    del f[ep_id]["frames"][cam]
                    f[ep_id]["frames"].create_dataset(cam, data=data, chunks=(1, *data.shape[1:]))
    plain, packed, chunked = (EpisodeWindowDataset(roots[c], window_len=3, stride=2, seed=4)
                              for c in ("none", "lzf", "chunked"))  # fmt: skip
    batch = plain.__getitems__(list(range(20)))
    for i in range(20):
        a, b, c = plain[i], packed[i], chunked[i]
        assert a.keys() == b.keys() == c.keys() == batch[i].keys()
        for key, value in a.items():
            same = torch.equal if isinstance(value, torch.Tensor) else (lambda x, y: x == y)
            assert same(value, b[key]) and same(value, c[key]) and same(value, batch[i][key]), key


def test_an_item_carries_its_episodes_kind(tmp_path):
    """The kind a collected episode records (robofm.sim.tasks.EPISODE_KINDS: layout["kind"]) reaches its windows,
    which robofm-eval reads to score the policy on demonstrations; an episode without one has NO_KIND."""
    episodes = [indexed_episode(8, seed=i) for i in range(3)]
    episodes[0].layout = {"mt1_seed": 0, "mt1_index": 0, "kind": EPISODE_KINDS.index("dart")}
    episodes[1].layout = {"mt1_seed": 0, "mt1_index": 1}  # a layout recorded before kinds were
    ds = EpisodeWindowDataset(write_store(tmp_path / "store", episodes), window_len=2, stride=1)
    kinds = {info.source_index: ds.read_window(0, info, 0)["kind"] for info in ds.episodes[0]}
    assert kinds == {"0": EPISODE_KINDS.index("dart"), "1": NO_KIND, "2": NO_KIND}
