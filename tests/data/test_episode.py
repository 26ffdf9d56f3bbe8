import numpy as np
import pytest

from robofm.data.episode import FRAME_CHUNK, resample, resize_chunks, resize_frames
from robofm.errors import EpisodeError
from tests.conftest import indexed_episode


def _wide_frames(t=3):
    """Left half black, right half white: shows what crop and pad keep."""
    f = np.zeros((t, 40, 80, 3), np.uint8)
    f[:, :, 40:] = 255
    return f


def test_resize_modes_keep_or_ignore_the_aspect_ratio_as_documented():
    f = _wide_frames()
    crop = resize_frames(f, (20, 20), "crop")  # centre 40x40 of the 40x80 frame: half black, half white
    assert crop.shape == (3, 20, 20, 3)
    assert crop[0, 10, 2, 0] == 0 and crop[0, 10, 17, 0] == 255
    pad = resize_frames(f, (20, 20), "pad")  # whole frame scaled to 10x20 and letterboxed with black
    assert (pad[:, :5] == 0).all() and (pad[:, 15:] == 0).all() and pad[0, 10, 17, 0] == 255
    stretch = resize_frames(f, (20, 20), "stretch")
    assert stretch[0, 10, 2, 0] == 0 and stretch[0, 10, 17, 0] == 255
    assert resize_frames(f, (40, 80)) is f
    with pytest.raises(ValueError, match="unknown resize mode"):
        resize_frames(f, (20, 20), "zoom")


def test_resizing_in_chunks_equals_resizing_all_at_once():
    rng = np.random.default_rng(0)
    f = rng.integers(0, 256, (FRAME_CHUNK * 2 + 5, 24, 32, 3), dtype=np.uint8)
    chunks = (f[i : i + FRAME_CHUNK] for i in range(0, len(f), FRAME_CHUNK))
    np.testing.assert_array_equal(resize_chunks(chunks, (12, 12)), resize_frames(f, (12, 12)))


def test_resample_to_half_rate_takes_every_other_frame_and_interpolates():
    ep = indexed_episode(21)  # 10 fps, timestamps 0.0 .. 2.0
    ep.timestamp = ep.timestamp + 0.001 * np.sin(np.arange(21))  # a little jitter, as real logs have
    out = resample(ep, 5.0)
    assert out.length == 11
    np.testing.assert_allclose(out.timestamp, ep.timestamp[0] + np.arange(11) / 5)
    np.testing.assert_array_equal(out.frames["front"][:, 0, 0, 0], np.arange(0, 21, 2))
    np.testing.assert_allclose(out.state[:, 0], np.arange(0, 21, 2), atol=0.05)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda ep: setattr(ep, "timestamp", ep.timestamp[::-1].copy()), "timestamps are not increasing at step 1"),
        (lambda ep: ep.frames.__setitem__("front", ep.frames["front"][:-1]), "camera 'front' has 9 frames"),
        (lambda ep: setattr(ep, "action", ep.action[:-2]), "action has 8 steps but the frames have 10"),
        (lambda ep: ep.state.__setitem__((4, 0), np.inf), "state has 1 NaN/Inf values (first at step 4, dim 0)"),
    ],
)
def test_validate_names_the_problem(edit, message):
    ep = indexed_episode(10)
    edit(ep)
    with pytest.raises(EpisodeError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        ep.validate()
    assert "file synthetic-0, episode 0" in str(err.value)


def test_resample_at_the_native_rate_keeps_every_frame_of_float32_timestamps():
    ep = indexed_episode(100)
    ep.timestamp = (np.arange(100, dtype=np.float32) / np.float32(30)).astype(np.float64)  # as LeRobot stores them
    out = resample(ep, 30.0)
    assert out.length == 100
    np.testing.assert_array_equal(out.frames["front"][:, 0, 0, 0], np.arange(100))
