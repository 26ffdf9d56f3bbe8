"""robofm-viz on a tiny trained debug run: every file it writes decodes back with the expected frames and layout,
the report embeds what it shows, "what if" imagines its own frames, and bad input exits 2 with a clear message."""

from __future__ import annotations

import base64
import json
import re
from html import escape as html_escape

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image

from robofm.models.pretrained import export, from_pretrained
from robofm.viz.__main__ import main
from robofm.viz.rollout import PSNR_CAP, ActionTrace, edit_actions, max_horizon, psnr
from robofm.viz.video import HEADER, SEP, side_by_side, upscale_factor
from tests.conftest import torch_threads, write_store
from tests.models.conftest import make_store, textured_episode
from tests.train.conftest import TINY, train_in_process

HORIZON, FRAME = 2, 8  # 8x8 frames, 2-step windows at stride 2 (the debug experiment)
CAMERAS = ("front", "wrist")


@pytest.fixture(scope="module", autouse=True)
def one_thread_for_the_module():
    """Tiny models run faster on one thread on a busy 2-core machine."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(store, run folder) of 5 steps of the debug model on 2 episodes of 16 frames."""
    root = tmp_path_factory.mktemp("viz")
    store = make_store(root / "store", n=2, length=16)
    train_in_process(root / "run", TINY + [f"data.path={store}", "trainer.max_steps=5", "trainer.checkpoint_every=5"])
    return store, root / "run"


@pytest.fixture(scope="module")
def rollout(trained, tmp_path_factory):
    """The output folder of a rollout of the run (checkpoint= a run folder) at horizon 2."""
    store, run = trained
    out = tmp_path_factory.mktemp("out")
    main([f"checkpoint={run}", f"data.path={store}", "episode=ep-000001", f"horizon={HORIZON}", "sampler_steps=2",
          f"out={out}"])  # fmt: skip
    return out


FPS = 5.0  # the store's 10 fps at stride 2: one video frame per model step


def frames_of(path) -> list[np.ndarray]:
    with imageio.get_reader(path) as reader:  # iterate: an mp4 reader's len() is inf
        return [np.asarray(f) for f in reader]


def test_rollout_writes_every_file_decodable(rollout):
    u = upscale_factor(FRAME)
    for cam in CAMERAS:
        # real | imagined | |difference|, and real | true actions | shuffled | zero | reversed, SEP-pixel gaps
        for name, panels in (("rollout", 3), ("whatif", 5)):
            for suffix in ("gif", "mp4"):
                frames = frames_of(rollout / f"{name}_{cam}.{suffix}")
                assert len(frames) == HORIZON
                assert frames[0].shape == (HEADER + u * FRAME, panels * u * FRAME + (panels - 1) * SEP, 3)  # even
        with imageio.get_reader(rollout / f"rollout_{cam}.mp4") as reader:
            assert reader.get_meta_data()["fps"] == FPS
            assert reader.get_meta_data()["duration"] == pytest.approx(HORIZON / FPS, abs=0.05)
        Image.open(rollout / f"contact_{cam}.png").verify()
    for name in ("actions.png", "psnr.png"):
        Image.open(rollout / name).verify()
    assert all(p.stat().st_size > 0 for p in rollout.iterdir())


def test_report_embeds_images_and_gifs_and_links_videos(rollout, capsys):
    html = (rollout / "report.html").read_text()
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    gifs = re.findall(r"data:image/gif;base64,([A-Za-z0-9+/=]+)", html)
    assert len(pngs) == 2 + len(CAMERAS) and len(gifs) == 2 * len(CAMERAS)  # plots, contact sheets; 2 GIFs a camera
    assert base64.b64decode(gifs[0]) == (rollout / "rollout_front.gif").read_bytes()
    for cam in CAMERAS:
        for name in ("rollout", "whatif"):
            assert f"href='{name}_{cam}.mp4'" in html and (rollout / f"{name}_{cam}.mp4").is_file()
    assert "copy-last-frame" in html


def test_metrics_cover_the_horizon(rollout):
    m = json.loads((rollout / "metrics.json").read_text())
    assert m["horizon"] == HORIZON and m["frame_index"] == [4, 6]  # context frames 0 and 2, stride 2
    assert len(m["psnr"]) == len(m["psnr_copy_last"]) == HORIZON
    assert len(m["action_mse"]) == 2
    assert {k: len(v) for k, v in m["action_mse_baselines"].items()} == {"mean action": 2, "repeat last action": 2}
    assert list(m["what_if"]) == ["shuffled", "zero", "reversed"]
    for w in m["what_if"].values():
        np.testing.assert_allclose(np.subtract(m["psnr"], w["psnr"]), w["action_use"])


def test_horizon_is_capped_by_the_episode(trained, tmp_path, capsys):
    store, run = trained
    main([f"checkpoint={run}/export", f"data.path={store}", "episode=ep-000000", "start=8", "horizon=9",
          "sampler_steps=1", f"out={tmp_path}"])  # fmt: skip
    capped = max_horizon(16, 8, 2, 2)
    assert capped == 2 and len(frames_of(tmp_path / "rollout_front.gif")) == capped
    assert f"horizon 9 capped to {capped}" in (tmp_path / "report.html").read_text()


def test_other_episodes_too_short_for_a_window_are_not_warned_about(trained, tmp_path, caplog):
    """The rollout reads one episode: a store's shorter episodes are not the user's problem here."""
    _, run = trained
    store = write_store(tmp_path / "store", [textured_episode(16, seed=0), textured_episode(4, seed=1)])
    main([f"checkpoint={run}", f"data.path={store}", "episode=ep-000000", "sampler_steps=1", f"out={tmp_path / 'out'}"])
    assert (tmp_path / "out" / "report.html").exists()
    assert "shorter than a window" not in caplog.text


def test_each_what_if_imagines_its_own_frames(trained, tmp_path):
    """Beside the real-action rollout, one panel per what-if: a model whose frame head is not ~zero after 5 steps
    (as the model tests do), so the actions can show in the frames."""
    store, run = trained
    pretrained = from_pretrained(run)
    torch.manual_seed(0)
    torch.nn.init.normal_(pretrained.model.frame_head.weight, std=0.5)
    base = export(tmp_path / "export", pretrained.model, pretrained.builder, pretrained.diffusion)
    out = tmp_path / "out"
    main([f"checkpoint={base}", f"data.path={store}", "episode=ep-000000", f"horizon={HORIZON}", "sampler_steps=2",
          "what_if=scale:-3,reversed", f"out={out}"])  # fmt: skip
    w = 8 * upscale_factor(FRAME)
    panel = lambda frame, i: frame[HEADER:, i * (w + SEP) : i * (w + SEP) + w]  # noqa: E731
    for cam in CAMERAS:
        real_actions, what_if = frames_of(out / f"rollout_{cam}.gif"), frames_of(out / f"whatif_{cam}.gif")
        assert len(what_if) == HORIZON and what_if[0].shape[1] == 4 * w + 3 * SEP  # real | true | scale | reversed
        assert np.array_equal(panel(real_actions[0], 1), panel(what_if[0], 1))  # the same imagined frames
        for i in (2, 3):
            assert not np.array_equal(panel(what_if[0], 1), panel(what_if[0], i))
        assert len(frames_of(out / f"whatif_{cam}.mp4")) == HORIZON
    html = (out / "report.html").read_text()
    assert html.count("data:image/gif") == 2 * len(CAMERAS) and "href='whatif_front.mp4'" in html
    assert "under scale:-3 | reversed actions" in html and "PSNR under reversed actions (dB)" in html


def test_what_if_none_writes_no_what_if(trained, tmp_path):
    store, run = trained
    main([f"checkpoint={run}", f"data.path={store}", "episode=ep-000000", "sampler_steps=1", "what_if=none",
          f"out={tmp_path}"])  # fmt: skip
    assert (tmp_path / "rollout_front.gif").is_file() and not list(tmp_path.glob("whatif_*"))
    assert json.loads((tmp_path / "metrics.json").read_text())["what_if"] == {}


@pytest.mark.parametrize(("args", "message"), [
    (["episode=ep-999"], "has no episode 'ep-999'; it has ep-000000, ep-000001"),
    (["episode=ep-000000", "start=12"], "has 16 frames; a rollout from frame 12 needs at least 17"),
    (["episode=ep-000000", "what_if=double"], "what_if specs are shuffled, zero, reversed, scale:F or file:"),
    (["episode=ep-000000", "what_if=zero,,reversed"], "what_if must list distinct specs"),
    (["episode=ep-000000", "what_if=zero,zero"], "what_if must list distinct specs"),
    (["episode=ep-000000", "what_if=scale:x"], "what_if=scale:F needs a number"),
    (["episode=ep-000000", "colour=red"], "expected key=value with key one of"),
    (["episode=ep-000000", "eval=no-such-eval.json"], "eval=no-such-eval.json cannot be read"),
])  # fmt: skip
def test_bad_input_exits_2_with_a_message(trained, tmp_path, capsys, args, message):
    store, run = trained
    with pytest.raises(SystemExit) as e:
        main([f"checkpoint={run}", f"data.path={store}", f"out={tmp_path}", *args])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_without_an_episode_it_shows_the_longest_held_out_one_with_the_eval_tables(trained, tmp_path, capsys):
    """What `make demo` runs: robofm-eval's JSON at the top of the report of the default episode."""
    from robofm.data.store import EpisodeStore
    from robofm.eval.__main__ import main as eval_main

    store, run = trained
    episodes = EpisodeStore(store).episodes
    held_out = [e for e in episodes if e.split == "val"] or episodes
    expected = max(held_out, key=lambda e: e.length).id
    split = "val" if held_out[0].split == "val" else "train"
    result = tmp_path / "eval.json"
    assert eval_main([f"checkpoint={run}", f"data.path={store}", f"split={split}", "horizons=1", "sampler_steps=2",
                      "batches=1", "batch_size=2", f"out={result}"]) == 0  # fmt: skip
    main([f"checkpoint={run}", f"data.path={store}", f"horizon={HORIZON}", "sampler_steps=2", f"eval={result}",
          f"out={tmp_path / 'out'}"])  # fmt: skip
    html = (tmp_path / "out" / "report.html").read_text()
    assert f"episode {expected}" in html
    assert "Held-out actions" in html and "Held-out imagined frames" in html and "Held-out bars" in html
    for name in ("train_mean", "repeat_last", "copy_last", "shuffled_actions", "action_use", "sampler steps"):
        assert f"<th>{name}</th>" in html
    verdicts = json.loads(result.read_text())["verdicts"]
    words = {True: "PASS", False: "FAIL", None: "n/a"}
    for v in verdicts:  # one row per bar: its verdict, the bar, the numbers
        cells = [words[v["passed"]], v["bar"], v["detail"]]
        assert "<tr>" + "".join(f"<td>{html_escape(c)}</td>" for c in cells) + "</tr>" in html
    assert verdicts[1]["passed"] is None  # horizons=1: "uses actions" (horizon 4) is n/a


def test_an_eval_json_without_verdicts_exits_2(trained, tmp_path, capsys):
    """An eval.json of an older robofm-eval (no verdicts, one sampler setting) is named, not half-rendered."""
    store, run = trained
    old = tmp_path / "eval.json"
    old.write_text(json.dumps({"actions": {}, "world_model": {}, "windows": 1, "split": "val", "store": "s"}))
    with pytest.raises(SystemExit) as e:
        main([f"checkpoint={run}", f"data.path={store}", "episode=ep-000000", f"eval={old}"])
    assert e.value.code == 2 and "it lacks ['verdicts']" in capsys.readouterr().err


def test_what_if_file_of_the_wrong_shape_exits_2(trained, tmp_path, capsys):
    store, run = trained
    np.save(tmp_path / "a.npy", np.zeros((3, 5), np.float32))
    with pytest.raises(SystemExit) as e:
        main([f"checkpoint={run}", f"data.path={store}", "episode=ep-000000", f"what_if=file:{tmp_path / 'a.npy'}"])
    assert e.value.code == 2 and "holds an array of shape (3, 5)" in capsys.readouterr().err


def test_edit_actions_reads_both_file_layouts(tmp_path):
    actions, mask = torch.randn(1, 2, 2, 3), torch.tensor([True, True, False])  # H 2, s 2, 2 of 3 dims used
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    np.save(tmp_path / "flat.npy", x)
    np.save(tmp_path / "chunks.npy", x.reshape(2, 2, 2))
    for name in ("flat", "chunks"):
        edited = edit_actions(f"file:{tmp_path / name}.npy", actions, mask)
        assert edited.shape == (1, 2, 2, 3) and torch.equal(edited[0, :, :, :2].reshape(4, 2), torch.from_numpy(x))
        assert not edited[..., 2].any()
    assert torch.equal(edit_actions("scale:0.5", actions, mask), actions * 0.5)
    assert not edit_actions("zero", actions, mask).any()


def test_shuffled_and_reversed_replay_the_same_actions_at_other_times():
    actions = torch.arange(24.0).reshape(1, 4, 2, 3)  # H 4 chunks of s 2 steps, 3 dims: step t is [3t, 3t+1, 3t+2]
    mask = torch.ones(3, dtype=torch.bool)
    steps = lambda a: a.reshape(8, 3)  # noqa: E731
    assert torch.equal(steps(edit_actions("reversed", actions, mask)), steps(actions).flip(0))
    shuffled = steps(edit_actions("shuffled", actions, mask, seed=1))
    order = (shuffled[:, 0] / 3).long()
    assert sorted(order.tolist()) == list(range(8)) and order.tolist() != list(range(8))
    assert torch.equal(shuffled, steps(actions)[order])  # whole steps move: each keeps its dimensions together
    assert torch.equal(edit_actions("shuffled", actions, mask, seed=1), edit_actions("shuffled", actions, mask, seed=1))


def test_psnr_of_known_images():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[1] = 255
    np.testing.assert_allclose(psnr(a, b), [PSNR_CAP, 0.0])
    c = np.full((4, 4, 3), 10, np.uint8)  # mse 100: 10 log10(255^2 / 100)
    np.testing.assert_allclose(psnr(a[0], c), 10 * np.log10(255.0**2 / 100))


def test_side_by_side_layout():
    panels = [np.full((6, 5, 3), v, np.uint8) for v in (0, 100, 200)]
    out = side_by_side(panels, ["a", "b", "c"], "title", 2)
    assert out.shape == (HEADER + 12, 3 * 10 + 2 * SEP, 3)
    assert (out[HEADER:, 10 + SEP : 20 + SEP] == 100).all() and (out[HEADER:, 10 : 10 + SEP] == 255).all()


def test_action_trace_mse_and_baselines():
    true = np.arange(8, dtype=np.float32)[:, None]  # (T 8, D 1)
    trace = ActionTrace(true, predicted=true[2:6] + 1, first=2, stride=2, store_mean=np.zeros(1, np.float32))
    np.testing.assert_allclose(trace.mse(), [1.0])
    baselines = trace.baseline_mse()  # chunks at frames 2 and 4 repeat the actions of frames 1 and 3
    np.testing.assert_allclose(baselines["repeat last action"], [(1 + 4 + 1 + 4) / 4])
    np.testing.assert_allclose(baselines["mean action"], [(4 + 9 + 16 + 25) / 4])


def test_the_report_names_the_episode_kind_and_says_when_its_actions_are_no_demonstration(trained, tmp_path):
    """A DART episode's report names its kind and says that the policy is not meant to follow its actions; an
    expert episode's names its kind alone."""
    _, run = trained
    episodes = [textured_episode(16, seed=i) for i in range(2)]
    for ep, kind in zip(episodes, (0, 1), strict=True):
        ep.layout = {"mt1_seed": 0, "mt1_index": kind, "kind": kind}
    store = write_store(tmp_path / "store", episodes)
    for episode, kind in (("ep-000000", "expert"), ("ep-000001", "dart")):
        out = tmp_path / episode
        main([f"checkpoint={run}", f"data.path={store}", f"episode={episode}", "horizon=1", "sampler_steps=1",
              "what_if=none", f"out={out}"])  # fmt: skip
        assert json.loads((out / "metrics.json").read_text())["kind"] == kind
        html = (out / "report.html").read_text()
        assert f"kind {kind}" in html
        assert ("not meant to follow them" in html) == (kind == "dart")
