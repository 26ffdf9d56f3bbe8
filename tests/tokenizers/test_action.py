"""Action normalization and tokenization: round trips within the stated bounds, and decoders that never fail."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robofm.errors import UsageError
from robofm.tokenizers.action import (
    EMPTY,
    END,
    BinningActionTokenizer,
    FastActionTokenizer,
    Normalizer,
    build_action_tokenizer,
    dct_matrix,
    load_action_tokenizer,
)

STEPS, DIMS = 8, 4


def smooth_chunks(n: int, seed: int) -> np.ndarray:
    """[n, STEPS, DIMS] sums of two low-frequency sines with random phases, inside [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, STEPS)[None, :, None, None]
    freq = rng.uniform(0, 1.0, (n, 1, DIMS, 2))
    phase, amp = rng.uniform(0, 2 * np.pi, (n, 1, DIMS, 2)), rng.uniform(0, 0.5, (n, 1, DIMS, 2))
    return (amp * np.sin(2 * np.pi * freq * t + phase)).sum(-1)


def noisy_chunks(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, STEPS, DIMS))


@pytest.fixture(scope="module")
def fast() -> FastActionTokenizer:
    chunks = np.concatenate([smooth_chunks(150, 0), noisy_chunks(50, 1)])  # 200 chunks [8, 4]
    return FastActionTokenizer(scale=10.0, vocab_size=256).fit(chunks)


# Normalizer


@pytest.fixture
def norm() -> Normalizer:
    return Normalizer({"arm": ([0.0, -2.0, 5.0], [10.0, 2.0, 5.0]), "gripper": ([0.0], [1.0])})


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_normalizer_round_trip_clip_constant_and_padded_dims(norm, kind):
    rng = np.random.default_rng(0)
    raw = np.zeros((6, 5), np.float32)  # 3 real dims padded to 5
    raw[:, 0], raw[:, 1], raw[:, 2] = rng.uniform(0, 10, 6), rng.uniform(-2, 2, 6), 5.0
    raw[:, 3:] = 7.0  # padding content must not leak through
    raw[0, :2] = [-100.0, 100.0]  # outside [q01, q99]: clipped
    x = torch.from_numpy(raw) if kind == "torch" else raw
    y = norm.normalize(x, "arm")
    assert type(y) is type(x) and y.dtype in (np.float32, torch.float32) and y.shape == (6, 5)
    y = np.asarray(y)
    assert np.all(np.abs(y) <= 1) and np.all(y[:, 2:] == 0)  # constant dim -> 0, padded dims -> 0
    assert np.allclose(y[0, :2], [-1, 1])
    back = np.asarray(norm.unnormalize(torch.from_numpy(y) if kind == "torch" else y, "arm"))
    np.testing.assert_allclose(back[1:, :3], raw[1:, :3], atol=1e-5)  # constant dim comes back as q01 = 5
    np.testing.assert_allclose(back[0, :2], [0.0, 2.0])  # clipped values come back at the bounds
    assert np.all(back[:, 3:] == 0)


def test_normalizer_state_dict_merge_and_errors(norm):
    again = Normalizer.from_state_dict(json.loads(json.dumps(norm.state_dict())))
    x = np.random.default_rng(0).normal(size=(4, 3))
    np.testing.assert_array_equal(again.normalize(x, "arm"), norm.normalize(x, "arm"))
    merged = Normalizer.merge([norm, Normalizer({"arm": ([-1.0, 0.0, 5.0], [3.0, 4.0, 5.0]), "cam": ([0.0], [1.0])})])
    assert sorted(merged.bounds) == ["arm", "cam", "gripper"]
    np.testing.assert_array_equal(merged.bounds["arm"][0], [-1, -2, 5])
    np.testing.assert_array_equal(merged.bounds["arm"][1], [10, 4, 5])
    with pytest.raises(UsageError, match="'dog'.*arm"):
        norm.normalize(x, "dog")
    with pytest.raises(UsageError, match="3 dims"):
        norm.normalize(x[:, :2], "arm")
    with pytest.raises(UsageError, match="3 dims in one normalizer, 2 in another"):
        Normalizer.merge([norm, Normalizer({"arm": ([0.0, 0.0], [1.0, 1.0])})])


def test_normalizer_from_stats_skips_action_free_embodiments():
    stats = {
        "arm": {"state": {"count": 9, "q01": [0.0, 1.0], "q99": [2.0, 3.0]}, "action": {"q01": [-1.0], "q99": [1.0]}},
        "video": {"state": {"q01": [0.0], "q99": [1.0]}, "action": None},
        "cam": {"state": {"q01": [0.0], "q99": [1.0]}, "action": {}},  # what the store writes for no actions
    }
    actions = Normalizer.from_stats(stats, "action")
    assert list(actions.bounds) == ["arm"] and actions.dims("arm") == 1
    assert Normalizer.from_stats(stats, "state").dims("arm") == 2
    with pytest.raises(UsageError, match="actions"):
        Normalizer.from_stats(stats, "actions")


@pytest.mark.gpu
def test_normalizer_keeps_tensor_on_device(norm):
    y = norm.normalize(torch.zeros(2, 4, device="cuda"), "arm")
    assert y.device.type == "cuda" and norm.unnormalize(y, "arm").device.type == "cuda"


# Binning


@pytest.mark.parametrize("n_bins", [256, 7])
def test_binning_bound_numpy_and_torch(n_bins, tmp_path):
    tok = build_action_tokenizer("binning", n_bins=n_bins)
    x = np.random.default_rng(0).uniform(-1.5, 1.5, (3, STEPS, DIMS))
    x[0, 0] = [-1.0, 1.0, 0.0, 1 - 1e-12]
    ids = tok.encode(x)
    assert ids.dtype == np.int64 and ids.shape == (3, STEPS * DIMS) and ids.min() >= 0 and ids.max() < tok.vocab_size
    assert ids[1, 2 * DIMS + 3] == tok.encode(x[1:2, 2:3, 3:4]).item()  # step-major: step 2, dim 3
    back = tok.decode(ids, STEPS, DIMS)
    assert back.dtype == np.float32 and back.shape == x.shape
    assert np.abs(back - np.clip(x, -1, 1)).max() <= 1 / n_bins + 1e-6
    t_ids = tok.encode(torch.from_numpy(x))
    assert isinstance(t_ids, torch.Tensor) and t_ids.dtype == torch.int64
    np.testing.assert_array_equal(t_ids.numpy(), ids)
    t_back = tok.decode(t_ids, STEPS, DIMS)
    assert isinstance(t_back, torch.Tensor) and t_back.dtype == torch.float32
    np.testing.assert_allclose(t_back.numpy(), back, atol=1e-6)
    tok.save(tmp_path)
    assert load_action_tokenizer(tmp_path).n_bins == n_bins == BinningActionTokenizer.load(tmp_path).n_bins


def test_binning_decode_clamps_and_checks_length():
    tok = BinningActionTokenizer(4)
    np.testing.assert_allclose(tok.decode(np.array([-3, 0, 3, 99]), 2, 2).ravel(), [-0.75, -0.75, 0.75, 0.75])
    with pytest.raises(UsageError, match="2 \\* 3 = 6"):
        tok.decode(np.zeros(5, np.int64), 2, 3)


# FAST


@pytest.mark.parametrize("make", [smooth_chunks, noisy_chunks])
def test_fast_round_trip_within_bound(fast, make):
    assert fast.error_bound() == pytest.approx(0.5 * np.sqrt(STEPS) / 10.0)
    x = make(50, 7)
    back = fast.decode_batch(fast.encode_batch(x))
    assert back.dtype == np.float32 and back.shape == x.shape
    assert np.abs(back - x).max() <= fast.error_bound() + 1e-6
    assert fast.encode_batch(torch.from_numpy(x[:1])) == fast.encode_batch(x[:1])


def test_fast_compresses_smooth_chunks(fast):
    assert fast.vocab_size <= 256
    lengths = [len(t) for t in fast.encode_batch(smooth_chunks(50, 8))]
    assert max(lengths) < STEPS * DIMS and np.mean(lengths) < STEPS * DIMS / 2


def test_fast_save_load_identical(fast, tmp_path):
    fast.save(tmp_path)
    loaded = FastActionTokenizer.load(tmp_path)
    assert (loaded.steps, loaded.dims, loaded.scale, loaded.vocab_size) == (STEPS, DIMS, 10.0, fast.vocab_size)
    x = np.concatenate([smooth_chunks(20, 9), noisy_chunks(20, 10)])
    ids = fast.encode_batch(x)
    assert loaded.encode_batch(x) == ids
    np.testing.assert_array_equal(loaded.decode_batch(ids), fast.decode_batch(ids))
    with pytest.raises(UsageError, match="'fast'"):
        BinningActionTokenizer.load(tmp_path)


def test_fast_decode_of_malformed_tokens_is_a_valid_chunk(fast):
    valid = fast.encode_batch(smooth_chunks(1, 11))[0]
    rng = np.random.default_rng(0)
    random_ids = rng.integers(-50, fast.vocab_size + 50, 40).tolist()  # includes out-of-range ids
    malformed = [[], random_ids, valid[: len(valid) // 2], valid * 2, [10**12]]
    for tokens in malformed:
        x = fast.decode_batch([tokens])[0]
        assert x.shape == (STEPS, DIMS) and x.dtype == np.float32 and np.isfinite(x).all() and np.abs(x).max() <= 1
    np.testing.assert_array_equal(fast.decode_batch([valid * 2]), fast.decode_batch([valid]))  # too long: truncated
    assert np.all(fast.decode_batch([[]]) == 0)


def test_fast_errors():
    with pytest.raises(UsageError, match="not fitted"):
        FastActionTokenizer().encode(np.zeros((1, STEPS, DIMS)))
    tok = FastActionTokenizer(vocab_size=64).fit(noisy_chunks(5, 0))
    with pytest.raises(UsageError, match=r"\(8, 4\), got \(8, 3\)"):
        tok.encode(np.zeros((1, STEPS, 3)))
    with pytest.raises(UsageError, match="no chunks"):
        FastActionTokenizer().fit([])
    with pytest.raises(UsageError, match="unknown action tokenizer kind 'vq'"):
        build_action_tokenizer("vq")
    with pytest.raises(UsageError, match="n_bin"):
        build_action_tokenizer("binning", n_bin=3)


# One protocol


@pytest.mark.parametrize("kind", ["binning", "fast"])
def test_binning_and_fast_stand_behind_one_protocol(kind, fast, tmp_path):
    """encode -> rows of slots(s, D) ids, EMPTY or END; decode back within the bound on the real dimensions;
    empty_slots are the slots no chunk of those dimensions fills; a saved tokenizer encodes the same rows."""
    tok = BinningActionTokenizer(256) if kind == "binning" else fast
    x = torch.from_numpy(smooth_chunks(6, 12)).float()
    dims = torch.ones(6, DIMS, dtype=torch.bool)
    dims[:3, -1] = False  # three chunks of an embodiment with one dimension fewer (padded with zeros)
    x[:3, :, -1] = 0.0
    ids = tok.encode(x, dims)
    assert isinstance(ids, torch.Tensor) and ids.shape == (6, tok.slots(STEPS, DIMS))
    assert (((ids >= 0) & (ids < tok.vocab_size)) | (ids == EMPTY) | (ids == END)).all()
    empty = tok.empty_slots(dims, STEPS)
    assert empty.shape == ids.shape and (ids[empty] == EMPTY).all()
    if tok.variable_length:  # tokens, one END, then EMPTY
        assert ((ids == END).sum(-1) == 1).all() and not empty.any()
        after = torch.arange(ids.shape[1]) > (ids == END).float().argmax(-1, keepdim=True)
        assert (ids[after] == EMPTY).all() and (ids[~after & (ids != END)] >= 0).all()
    else:  # one token per step and real dimension
        assert not (ids == END).any() and torch.equal(ids == EMPTY, empty) and int(empty.sum()) == 3 * STEPS
    back = tok.decode(ids, STEPS, DIMS)
    assert isinstance(back, torch.Tensor) and back.shape == x.shape
    bound = 1 / 256 if kind == "binning" else tok.error_bound()
    assert (back - x)[dims[:, None, :].expand_as(x)].abs().max() <= bound + 1e-6
    tok.save(tmp_path)
    loaded = load_action_tokenizer(tmp_path)
    assert loaded.slots(STEPS, DIMS) == tok.slots(STEPS, DIMS) and torch.equal(loaded.encode(x, dims), ids)


def test_binning_expects_the_mean_bin_centre_and_fast_has_no_slot_values(fast):
    tok = BinningActionTokenizer(4)  # centres -0.75, -0.25, 0.25, 0.75
    one_hot = torch.nn.functional.one_hot(torch.tensor([[0, 3], [1, 2]]), 4).float()  # (N=2, slots=2, V=4)
    torch.testing.assert_close(tok.expected(one_hot, 1, 2), tok.decode(torch.tensor([[0, 3], [1, 2]]), 1, 2))
    split = torch.tensor([[[0.5, 0.0, 0.0, 0.5]]])  # half on each extreme: the mean is the middle
    assert tok.expected(split, 1, 1).item() == pytest.approx(0.0)
    assert fast.expected(split, STEPS, DIMS) is None


def test_fast_cuts_a_chunk_longer_than_its_slots_and_counts_it(fast):
    tight = FastActionTokenizer(scale=10.0, vocab_size=256, chunk_slots=3).fit(noisy_chunks(20, 2))
    ids = tight.encode(noisy_chunks(2, 3))
    assert ids.shape == (2, 3) and (ids[:, 2] == END).all() and (ids[:, :2] >= 0).all()
    assert tight.truncated_chunks == 2
    assert np.abs(tight.decode(ids, STEPS, DIMS)).max() <= 1  # the cut chunk still decodes (without its tail)


@pytest.mark.parametrize("n", [1, 2, 7, 16])
def test_dct_matrix_is_scipys_orthonormal_dct_and_its_transpose_the_inverse(n):
    import scipy.fft

    x = np.random.default_rng(n).normal(size=(n, 3))
    np.testing.assert_allclose(dct_matrix(n) @ x, scipy.fft.dct(x, norm="ortho", axis=0), atol=1e-12)
    np.testing.assert_allclose(dct_matrix(n).T @ (dct_matrix(n) @ x), x, atol=1e-12)
