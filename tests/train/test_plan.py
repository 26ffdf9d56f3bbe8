"""The plan printed at start and robofm-plan's answer for a compute budget."""

from __future__ import annotations

import math

from robofm.models.config import ModelConfig
from robofm.train.plan import main, suggest

IO = dict(vocab_size=533, patch_dim=768, state_dim=4, max_cameras=2, max_patches=36)


def test_suggest_picks_the_size_closest_to_twenty_tokens_per_parameter():
    for size in ("small", "base", "large"):
        n = ModelConfig.sized(size, **IO).expected_parameters()
        rows = suggest(6 * n * 20 * n, dataset_tokens=1e9, io=IO)  # the compute-optimal budget of this size
        best = next(r for r in rows if r["best"])
        assert best["size"] == size and math.isclose(best["tokens_per_param"], 20, rel_tol=1e-6)


def test_robofm_plan_prints_a_table_for_a_store(tiny_store, capsys):
    main(["--store", str(tiny_store), "--flops", "1e15", "--patch-size", "4", "--window-len", "2"])
    out = capsys.readouterr().out
    assert "robofm-plan" in out and "->" in out and all(s in out for s in ("debug", "small", "base"))


def test_a_mixture_run_reports_what_each_store_gets_at_the_start(tmp_path, tiny_store, capsys):
    from tests.models.conftest import make_store
    from tests.train.conftest import TINY, train_in_process

    other = make_store(tmp_path / "other", n=2, length=16)
    train_in_process(tmp_path / "run", TINY + [f"data.path=[{tiny_store},{other}]", "data.weights=[1,3]",
                                               "trainer.max_steps=1"])  # fmt: skip
    err = " ".join(capsys.readouterr().err.split())
    assert "mixture 0" in err and "mixture 1" in err and "(weight 75.0%;" in err
