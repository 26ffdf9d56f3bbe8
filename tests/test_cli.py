"""The shared key=value command line (robofm.cli): keys, types and defaults come from a dataclass; --help lists them,
--cfg job prints the resolved config; an unknown key, a bad value or a missing required key exits 2 naming it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import yaml

from robofm.cli import load_settings, parse_command, settings_of
from robofm.errors import UsageError


@dataclass
class Job:
    checkpoint: str
    data_path: str = field(metadata={"help": "the episode store"})
    horizons: tuple[int, ...] = (1, 4, 16)
    ensemble: float | None = None
    seed: int = 0
    fast: bool = False


NAMES = {"data_path": "data.path"}


def run(argv: list[str]) -> Job:
    return parse_command(Job, argv, prog="job", description="A test command.", names=NAMES)


def test_values_are_typed_by_the_dataclass_and_dotted_keys_map_to_fields():
    cfg = run(["checkpoint=run", "data.path=store", "horizons=1,8", "ensemble=0.5", "seed=3", "fast=true", "seed=4"])
    assert cfg == Job("run", "store", horizons=(1, 8), ensemble=0.5, seed=4, fast=True)  # the later seed= wins
    assert run(["checkpoint=a", "data.path=b"]) == Job("a", "b")
    assert load_settings(Job, ["checkpoint=a", "data.path=b", "horizons=[2, 3]", "ensemble=null"], NAMES).horizons == (
        2,
        3,
    )
    assert settings_of(Job("a", "b"), NAMES)["data.path"] == "b"


def test_help_lists_every_key_with_its_type_and_default(capsys):
    with pytest.raises(SystemExit) as e:
        run(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    rows = {
        line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ") and "--" not in line
    }
    assert rows["checkpoint"] == ["str", "required"]
    assert rows["data.path"] == ["str", "required", "the", "episode", "store"]
    assert rows["horizons"] == ["tuple[int,", "...]", "1,4,16"]
    assert rows["ensemble"] == ["float", "|", "null", "null"]
    assert rows["seed"] == ["int", "0"] and rows["fast"] == ["bool", "false"]
    assert "A test command." in out and "--cfg job" in out


@pytest.mark.parametrize("flag", [["--cfg", "job"], ["--cfg"], ["-c", "job"]])
def test_cfg_prints_the_resolved_config_as_yaml(flag, capsys):
    with pytest.raises(SystemExit) as e:
        run(["checkpoint=run", *flag, "data.path=store", "horizons=2"])
    assert e.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = {"checkpoint": "run", "data": {"path": "store"}, "horizons": [2], "ensemble": None, "seed": 0}
    assert printed == {**expected, "fast": False}


def test_cfg_shows_a_missing_required_key_as_missing(capsys):
    with pytest.raises(SystemExit) as e:
        run(["--cfg", "job", "checkpoint=run"])
    assert e.value.code == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"] == {"path": "???"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["checkpoint=a", "data.path=b", "colour=red"], "unknown key 'colour': expected key=value with key one of"),
        (["checkpoint=a", "data.path=b", "seed=one"], "bad value for seed: 'one' is not int"),
        (["checkpoint=a", "data.path=b", "horizons=1,x"], "bad value for horizons: '1,x' is not tuple[int, ...]"),
        (["checkpoint=a", "data.path=b", "fast=maybe"], "bad value for fast"),
        (["checkpoint=a"], "missing data.path=..."),
        (["checkpoint=a", "data.path"], "'data.path' is not key=value"),
        (["checkpoint=a", "data.path=b", "--colour"], "unknown option '--colour'"),
        (["--cfg", "hydra", "checkpoint=a", "data.path=b"], "only --cfg job"),
    ],
)
def test_usage_errors_exit_2_with_one_line_naming_the_key(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        run(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("job: error: ") and message in err
    with pytest.raises(UsageError):
        load_settings(Job, [t for t in argv if t != "--cfg"], NAMES)


def _commands():
    from robofm.eval.__main__ import main as eval_main
    from robofm.eval.sim import main as sim_main
    from robofm.serve import main as serve_main
    from robofm.viz.__main__ import main as viz_main

    return {
        "robofm-eval": (eval_main, ["checkpoint=run", "data.path=store"], {"horizons": [1, 4, 16], "split": "val"}),
        "robofm-viz": (viz_main, ["checkpoint=run", "data.path=store"], {"horizon": 16, "what_if": "shuffled,zero,reversed"}),
        "robofm-eval-sim": (sim_main, ["policy=run", "task=reach-v3"], {"episodes": 20, "fps": 20.0}),
        "robofm-serve": (serve_main, ["policy=run"], {"host": "127.0.0.1", "port": 8000, "ensemble": None}),
    }


@pytest.mark.parametrize("command", ["robofm-eval", "robofm-viz", "robofm-eval-sim", "robofm-serve"])
def test_every_command_has_help_and_cfg(command, capsys):
    main, required, defaults = _commands()[command]
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {command} key=value") and all(r.split("=")[0] in out for r in required)
    with pytest.raises(SystemExit) as e:
        main(["--cfg", "job", *required])
    assert e.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert {k: printed[k] for k in defaults} == defaults
    if command not in ("robofm-eval-sim", "robofm-serve"):
        assert printed["data"] == {"path": "store"}
    with pytest.raises(SystemExit) as e:
        main([*required, "colour=red"])
    assert e.value.code == 2 and "unknown key 'colour'" in capsys.readouterr().err
