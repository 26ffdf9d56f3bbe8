"""A damaged export or checkpoint gives a UsageError naming the file and what is wrong with it, in from_pretrained
and in robofm-eval (one line, exit 2), never a raw JSONDecodeError, SafetensorError or TypeError."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from robofm.errors import UsageError
from robofm.eval.__main__ import main as eval_main
from robofm.models.diffusion import FrameDiffusion
from robofm.models.pretrained import export, from_pretrained
from robofm.train.checkpoint import load_checkpoint
from tests.models.conftest import make_builder, make_model, make_store


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(export folder, store) of an untrained debug model: nothing here needs trained weights."""
    root = tmp_path_factory.mktemp("damage")
    store = make_store(root / "store", n=2)
    _, builder = make_builder([store])
    path = export(root / "export", make_model(builder), builder, FrameDiffusion(), trained_on={"stores": [str(store)]})
    return path, store


@pytest.fixture
def copy(exported, tmp_path):
    path = tmp_path / "export"
    shutil.copytree(exported[0], path)
    return path


def _raises(path, *fragments) -> str:
    with pytest.raises(UsageError) as err:
        from_pretrained(path)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)
    return str(err.value)


def _edit_json(path, edit) -> None:
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


def test_the_intact_export_loads(exported):
    assert from_pretrained(exported[0]).trained_on["stores"] == [str(exported[1])]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "model.json is not valid JSON"),
        ("[64, 2, 4]", "model.json: expected a JSON object, got list"),
    ],
)
def test_model_json_that_is_not_an_object(copy, text, fragment):
    (copy / "model.json").write_text(text)
    _raises(copy, str(copy / "model.json"), fragment)


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda d: d.update(foo=1), "unknown key 'foo'"),
        (lambda d: d.pop("dim"), "missing key 'dim'"),
        (lambda d: d.update(dim="64"), "dim must be a positive integer, got '64'"),
        (lambda d: d.update(depth=0), "depth must be a positive integer, got 0"),
        (lambda d: d.update(vocab_size=True), "vocab_size must be a positive integer, got True"),
        (lambda d: d.update(norm_eps=-1), "norm_eps must be a positive number"),
        (lambda d: d.update(adaln="no"), "adaln must be true or false"),
        (lambda d: d.update(attention="flash"), "model.attention must be sdpa or flex, not 'flash'"),
        (lambda d: d.update(dim=65), "model.dim 65 must split into 4 heads"),
        (lambda d: d.update(patch_dim=d["patch_dim"] + 1), "cannot load the weights"),  # the weights disagree
    ],
)
def test_model_json_with_wrong_keys_or_values(copy, edit, fragment):
    _edit_json(copy / "model.json", edit)
    _raises(copy, str(copy / "model.json") if "weights" not in fragment else "model.safetensors", fragment)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing"])
def test_damaged_weights(copy, damage):
    weights = copy / "model.safetensors"
    data = weights.read_bytes()
    if damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x07" * 64, "empty": b""}[damage])
    _raises(copy, f"cannot load the weights {weights}")


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("diffusion.json", "{garbage", "diffusion.json is not valid JSON"),
        ("diffusion.json", '{"kind": "flow", "steps": 3}', "diffusion.json: unknown key 'steps'"),
        ("diffusion.json", '{"kind": "gan"}', "diffusion.json: objective.frame_diffusion must be flow or ddpm"),
        ("diffusion.json", "3", "diffusion.json: expected a JSON object, got int"),
        ("trained_on.json", "{garbage", "trained_on.json is not valid JSON"),
        ("trained_on.json", '["store"]', "trained_on.json: expected a JSON object, got list"),
        ("tokenization/sequence.json", "{garbage", "sequence.json"),
        ("tokenization/image_tokenizer/image_tokenizer.json", "{garbage", "image_tokenizer.json is not valid JSON"),
        ("tokenization/image_tokenizer/image_tokenizer.json", '{"kind": "pixel", "x": 1}', "TypeError"),
        ("tokenization/action_tokenizer/action_tokenizer.json", "{garbage", "action_tokenizer.json"),
        ("tokenization/text_tokenizer/text_tokenizer.json", "[]", "text_tokenizer.json"),
    ],
)
def test_damaged_json_beside_the_weights(copy, name, text, fragment):
    (copy / name).write_text(text)
    _raises(copy, fragment)


def test_a_sequence_json_without_a_key_names_the_tokenization(copy):
    _edit_json(copy / "tokenization" / "sequence.json", lambda d: d.pop("state_norm"))
    _raises(copy, f"the tokenization in {copy / 'tokenization'} is damaged", "state_norm")


def _checkpoint_run(exported_path, tmp_path, config_yaml: str):
    """A run folder with one checkpoint (no export): the model config comes from config.yaml."""
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step-00000001"
    ckpt.mkdir(parents=True)
    shutil.copytree(exported_path / "tokenization", run / "tokenization")
    shutil.copy(exported_path / "model.safetensors", ckpt / "model.safetensors")
    torch.save({"step": 1}, ckpt / "state.pt")
    (ckpt / "config.yaml").write_text(config_yaml)
    (run / "checkpoints" / "latest").write_text(ckpt.name)
    return run, ckpt


def test_a_checkpoint_with_a_damaged_config_yaml(exported, tmp_path):
    run, ckpt = _checkpoint_run(exported[0], tmp_path, "model: {size: debug}\nobjective: {}\n")
    assert from_pretrained(run).source == f"checkpoint {ckpt}"
    (ckpt / "config.yaml").write_text("model: [unclosed\n")
    _raises(run, f"{ckpt / 'config.yaml'} cannot be read as YAML")
    (ckpt / "config.yaml").write_text("objective: {}\n")
    _raises(run, f"{ckpt / 'config.yaml'}: model.size is missing")
    (ckpt / "config.yaml").write_text("model: {size: debug}\nobjective: {frame_diffusion: gan}\n")
    _raises(run, f"{ckpt / 'config.yaml'}: objective.frame_diffusion must be flow or ddpm")


class NotATensor:
    pass


def test_training_state_is_read_with_weights_only(exported, tmp_path):
    """state.pt holding an arbitrary pickled object is refused, not unpickled (torch.load(weights_only=True))."""
    _, ckpt = _checkpoint_run(exported[0], tmp_path, "model: {size: debug}\n")
    assert load_checkpoint(ckpt)[1] == {"step": 1}
    torch.save({"step": 1, "evil": NotATensor()}, ckpt / "state.pt")
    with pytest.raises(UsageError, match=f"cannot read checkpoint {ckpt}"):
        load_checkpoint(ckpt)


def test_robofm_eval_prints_one_line_for_a_damaged_export(exported, copy, capsys):
    (copy / "model.safetensors").write_bytes((copy / "model.safetensors").read_bytes()[:100])
    assert eval_main([f"checkpoint={copy}", f"data.path={exported[1]}", "split=train", "batches=1"]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and err.startswith("robofm-eval: error: cannot load the weights")
        and "Traceback" not in err
    )
