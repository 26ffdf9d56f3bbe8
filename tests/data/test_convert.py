"""The conversion pipeline's verdicts: kept, dropped with a reason, failed with the error; and exit codes."""

import json

import numpy as np
import pytest
from rich.console import Console

from robofm.data.convert import EXIT_NONE, EXIT_OK, EXIT_PARTIAL, ConvertOptions, convert
from robofm.data.quality import QualityConfig
from robofm.data.sources.base import EpisodeRef
from robofm.data.store import EpisodeStore
from robofm.errors import EpisodeError
from tests.models.conftest import textured_episode


class FakeSource:
    """Episodes described by a list of kinds: ok, dup (copy of ok 0), idle, nan, raise."""

    fps = 10.0

    def __init__(self, kinds):
        self.kinds = kinds

    def __str__(self):
        return "fake"

    def episodes(self):
        return [EpisodeRef("fake.h5", str(i), (k,)) for i, k in enumerate(self.kinds)]

    def load(self, ref, frame_size=None, resize_mode="crop"):
        (kind,) = ref.key
        seed = int(ref.index)
        if kind == "raise":
            raise EpisodeError("truncated file", file=ref.source, episode=ref.index)
        ep = textured_episode(16, seed=0 if kind == "dup" else seed, size=(12, 12))
        ep.source, ep.source_index = ref.source, ref.index
        if kind == "idle":
            ep.state[:] = 1.0
            ep.action[:] = 0.0
            for fr in ep.frames.values():
                fr[:] = fr[0]
        if kind == "nan":
            ep.action[3, 1] = np.nan
        return ep


def run(tmp_path, kinds, **kw):
    opts = ConvertOptions(out=tmp_path / "store", resolution=(8, 8), **kw)
    summary = convert(FakeSource(kinds), opts, Console(quiet=True))
    quality = json.loads((tmp_path / "store" / "quality.json").read_text())
    return summary, quality


@pytest.mark.parametrize("workers", [1, 2])
def test_every_episode_gets_a_verdict_with_its_reason(tmp_path, workers):
    summary, quality = run(tmp_path, ["ok", "dup", "idle", "nan", "raise", "ok"], workers=workers)
    assert [q["status"] for q in quality] == ["kept", "dropped", "dropped", "dropped", "failed", "kept"]
    assert quality[1]["reason"] == "duplicate" and quality[1]["duplicate_of"] == "ep-000000"
    assert quality[2]["reason"] == "idle" and quality[2]["value"]["frame_change"] == 0.0
    assert quality[3]["reason"] == "non_finite" and quality[3]["source_index"] == "3"
    assert quality[3]["message"] == "action has 1 NaN/Inf values (first at step 3, dim 1)"
    assert "episode 4: truncated file" in quality[4]["message"]
    assert summary.exit_code == EXIT_PARTIAL and summary.kept == 2 and summary.failed == 1
    assert dict(summary.dropped) == {"duplicate": 1, "idle": 1, "non_finite": 1}
    assert {"length", "action_std", "blank_fraction/front", "frozen_run/wrist"} <= quality[0]["value"].keys()
    store = EpisodeStore(tmp_path / "store")
    assert [e.source_index for e in store.episodes] == ["0", "5"]
    assert store.manifest["cameras"] == {"front": [8, 8], "wrist": [8, 8]}


def test_exit_codes(tmp_path):
    assert run(tmp_path / "a", ["ok", "idle"])[0].exit_code == EXIT_OK  # deliberate drops are not failures
    summary, quality = run(tmp_path / "b", ["raise", "nan"])
    assert summary.exit_code == EXIT_NONE and [q["status"] for q in quality] == ["failed", "dropped"]


def test_strict_stops_at_the_first_failure(tmp_path):
    summary, quality = run(tmp_path, ["ok", "raise", "ok"], strict=True)
    assert [q["status"] for q in quality] == ["kept", "failed"] and summary.exit_code == EXIT_PARTIAL


def test_filters_can_be_switched_off(tmp_path):
    summary, _ = run(tmp_path, ["ok", "dup", "idle"], quality=QualityConfig(keep=("duplicate", "near_duplicate", "idle")))
    assert summary.kept == 3


class TwoEmbodimentSource(FakeSource):
    def load(self, ref, frame_size=None, resize_mode="crop"):
        ep = super().load(ref, frame_size, resize_mode)
        if ref.index == "1":  # same embodiment name, other state size: the store cannot hold both
            ep.state = np.concatenate([ep.state, ep.state], axis=1)
        return ep


def test_episode_with_other_dims_for_the_same_embodiment_fails_alone(tmp_path):
    opts = ConvertOptions(out=tmp_path / "store", resolution=(8, 8))
    summary = convert(TwoEmbodimentSource(["ok", "ok", "ok"]), opts, Console(quiet=True))
    quality = json.loads((tmp_path / "store" / "quality.json").read_text())
    assert [q["status"] for q in quality] == ["kept", "failed", "kept"]
    assert "pass a different --embodiment" in quality[1]["message"]
    assert [e.source_index for e in EpisodeStore(tmp_path / "store").episodes] == ["0", "2"]
    assert summary.exit_code == EXIT_PARTIAL


def test_an_unforeseen_error_while_writing_fails_only_its_episode(tmp_path, monkeypatch):
    """Like the store's statistics once did on a wrapped uint64: a bare ValueError from inside the writer."""
    from robofm.data.store import StoreWriter

    add = StoreWriter.add

    def flaky_add(self, ep, content_hash, split):
        if ep.source_index == "1":
            raise ValueError("operands could not be broadcast together")
        return add(self, ep, content_hash, split)

    monkeypatch.setattr(StoreWriter, "add", flaky_add)
    summary, quality = run(tmp_path, ["ok", "ok", "ok"])
    assert [q["status"] for q in quality] == ["kept", "failed", "kept"]
    assert "episode 1: cannot be written: ValueError: operands could not" in quality[1]["message"]
    assert summary.exit_code == EXIT_PARTIAL
    assert [e.source_index for e in EpisodeStore(tmp_path / "store").episodes] == ["0", "2"]


@pytest.mark.parametrize("option", [
    ["--fps", "nan"], ["--fps", "inf"], ["--fps", "-5"], ["--fps", "1e7"], ["--fps", "1e-9"], ["--fps", "ten"],
    ["--workers", "-3"], ["--workers", "0"], ["--val-fraction", "5"], ["--shard-size", "-1"], ["--shard-size", "nan"],
    ["--source-fps", "inf"], ["--source-fps", "nan"], ["--quality", "min_length=nan"], ["--quality", "frame_tol=-1"],
])  # fmt: skip
def test_bad_options_are_refused_at_parse_time_in_one_line(tmp_path, capsys, option):
    from robofm.data.convert import main

    (tmp_path / "src").mkdir()
    with pytest.raises(SystemExit) as exit_:
        main(["hdf5", str(tmp_path / "src"), "--layout", "aloha", "--out", str(tmp_path / "out"), *option])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and option[0] in err, err
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_or_unwritable_is_a_usage_error(tmp_path, capsys):
    from robofm.data.convert import EXIT_USAGE, main

    (tmp_path / "src").mkdir()
    (tmp_path / "file").write_text("x")
    argv = ["hdf5", str(tmp_path / "src"), "--layout", "aloha", "--out"]
    assert main([*argv, str(tmp_path / "file")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "is an existing file" in err and len(err.strip().splitlines()) == 1
    assert main([*argv, str(tmp_path / "file" / "store")]) == EXIT_USAGE  # below a file: cannot be made
    assert "cannot be written" in " ".join(capsys.readouterr().err.split())


def test_an_overwrite_that_converts_nothing_leaves_the_old_store_as_it_was(tmp_path):
    from robofm.data.store import FAILED_OVERWRITE

    run(tmp_path, ["ok", "ok"])
    root = tmp_path / "store"
    before = {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}
    opts = ConvertOptions(out=root, resolution=(8, 8), mode="overwrite")
    summary = convert(FakeSource(["raise", "raise"]), opts, Console(quiet=True))
    assert summary.exit_code == EXIT_NONE and summary.quality_path == root / FAILED_OVERWRITE
    assert {name: (root / name).read_bytes() for name in before} == before
    assert [q["status"] for q in json.loads((root / FAILED_OVERWRITE).read_text())] == ["failed", "failed"]
    assert len(EpisodeStore(root).episodes) == 2


def test_the_data_license_is_recorded_in_the_store(tmp_path):
    from robofm.data.sources.lerobot import _card_license

    run(tmp_path, ["ok", "ok"], license="cc-by-4.0")
    provenance = json.loads((tmp_path / "store" / "manifest.json").read_text())["provenance"]
    assert provenance[-1]["license"] == "cc-by-4.0"
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\ntags: [LeRobot]\n---\n# a dataset card\n")
    assert _card_license(tmp_path / "README.md") == "apache-2.0"  # a LeRobot dataset's default, from its card
    (tmp_path / "README.md").write_text("# no header\n")
    assert _card_license(tmp_path / "README.md") is None and _card_license(tmp_path / "missing.md") is None
