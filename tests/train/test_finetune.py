"""robofm-finetune: a debug base fine-tuned on a store of another embodiment (other state and action dimensions),
in full, frozen and LoRA modes; what trains is what the mode says, and the export is a plain model."""

from __future__ import annotations

import pytest
import torch

from robofm.errors import UsageError
from robofm.models.pretrained import from_pretrained
from robofm.models.robofm import RobofmModel
from robofm.train.finetune import FinetuneConfig, apply_mode, load_base_weights, merge_lora, trainable
from tests.models.conftest import make_store
from tests.train.conftest import TINY, train_in_process

STEPS = ["trainer.max_steps=3", "trainer.checkpoint_every=3", "optim.lr=1e-2"]


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_store):
    """A pretrained debug export (embodiment "arm": state 3, action 2) and the new robot's store (state 5,
    action 4)."""
    root = tmp_path_factory.mktemp("finetune")
    train_in_process(root / "base", TINY + [f"data.path={tiny_store}", "trainer.max_steps=4"])
    other = make_store(root / "biarm", n=4, length=16, embodiment="biarm", state_dim=5, action_dim=4)
    return root / "base", other


def finetune(run, base_dir, store, *extra):
    return train_in_process(run, TINY + [f"data.path={store}", f"init_from={base_dir}", *STEPS, *extra])


def test_a_new_embodiment_keeps_the_base_and_grows_what_it_must(base, tmp_path):
    base_dir, store = base
    pre = from_pretrained(base_dir)
    trainer = finetune(tmp_path / "run", base_dir, store)
    b = trainer.builder
    assert b.embodiments == ["arm", "biarm"] and (b.state_dim, b.action_dim) == (5, 4)
    assert b.vocab.size == pre.builder.vocab.size and b.action_norm.dims("biarm") == 4
    fresh = RobofmModel(trainer.model.cfg)
    report = load_base_weights(fresh, pre.model.state_dict())
    assert report["grown"] == ["state_in.weight"] and not report["new"]
    w, base_w = fresh.state_in.weight, pre.model.state_in.weight  # columns [state 3 | mask 3] -> [state 5 | mask 5]
    assert torch.equal(w[:, :3], base_w[:, :3]) and torch.equal(w[:, 5:8], base_w[:, 3:])
    assert torch.equal(fresh.backbone.blocks[0].attn.qkv.weight, pre.model.backbone.blocks[0].attn.qkv.weight)
    tuned = from_pretrained(tmp_path / "run")  # the export of a fine-tuned run loads like any base
    assert tuned.builder.embodiments == ["arm", "biarm"]
    assert not torch.equal(tuned.model.backbone.blocks[0].attn.qkv.weight, pre.model.backbone.blocks[0].attn.qkv.weight)


def test_frozen_mode_trains_heads_and_embeddings_only(base, tmp_path):
    base_dir, store = base
    pre = from_pretrained(base_dir).model.state_dict()
    finetune(tmp_path / "run", base_dir, store, "finetune.mode=frozen")
    tuned = from_pretrained(tmp_path / "run").model.state_dict()
    blocks = [n for n in tuned if n.startswith("backbone.blocks.")]
    assert blocks and all(torch.equal(tuned[n], pre[n]) for n in blocks)
    assert not torch.equal(tuned["token_head.weight"], pre["token_head.weight"])
    card = (tmp_path / "run" / "export" / "README.md").read_text()  # the model card says which recipe made it
    assert "`robofm-finetune`: fine-tuning with the Transformer blocks frozen, 3 steps of 4 windows at lr 0.01" in card


def test_lora_trains_only_adapters_outside_the_heads_and_merges_back(base, tmp_path):
    base_dir, store = base
    pre = from_pretrained(base_dir).model.state_dict()
    trainer = finetune(tmp_path / "run", base_dir, store, "finetune.mode=lora", "finetune.lora_rank=2")
    model = trainer.model
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    cfg = model.cfg
    per_block = 2 * (cfg.dim + 3 * cfg.dim) + 2 * (cfg.dim + cfg.dim) + 2 * (cfg.dim + 2 * cfg.ffn_dim) \
        + 2 * (cfg.ffn_dim + cfg.dim)  # rank 2: A (r x in) and B (out x r) for qkv, out, gate_up, down
    assert sum(p.numel() for p in lora.values()) == cfg.depth * per_block
    n_train, _ = trainable(model)
    outside = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone.blocks."))
    assert n_train == sum(p.numel() for p in lora.values()) + outside
    base_weights = [n for n, p in model.named_parameters() if n.startswith("backbone.blocks.") and "lora_" not in n]
    assert all(not dict(model.named_parameters())[n].requires_grad for n in base_weights)

    exported = from_pretrained(tmp_path / "run").model  # a plain RobofmModel: adapters merged into the weights
    assert not any("lora_" in n for n in exported.state_dict())
    seq = trainer.builder([trainer.train_ds[i] for i in range(2)])
    with torch.no_grad():
        out, want = exported(seq), model.eval()(seq)
    for field in ("hidden", "logits", "frames"):
        torch.testing.assert_close(getattr(out, field), getattr(want, field), atol=1e-4, rtol=1e-4)
    q = "backbone.blocks.0.attn.qkv.weight"
    assert not torch.equal(exported.state_dict()[q], pre[q])  # the adapters changed the merged weight


def test_merge_of_untrained_adapters_is_the_base_and_bad_modes_fail():
    from robofm.errors import UsageError
    from robofm.models.config import ModelConfig

    model = RobofmModel(ModelConfig.sized("debug", vocab_size=300, patch_dim=48, state_dim=3, max_cameras=2,
                                          max_patches=4))  # fmt: skip
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    merged = merge_lora(apply_mode(model, FinetuneConfig(mode="lora", lora_rank=4)))  # B starts at zero
    assert merged.keys() == plain.keys() and all(torch.equal(merged[k], plain[k]) for k in plain)
    with pytest.raises(UsageError, match="finetune.mode must be one of full, frozen, lora"):
        FinetuneConfig(mode="adapters")


def test_a_lora_fine_tune_resumes_from_its_checkpoint(base, tmp_path):
    """resume=auto continues a fine-tuning run: the adapters come back from the checkpoint, not from the base."""
    base_dir, store = base
    run = tmp_path / "run"
    first = finetune(run, base_dir, store, "finetune.mode=lora", "trainer.max_steps=2", "trainer.checkpoint_every=1")
    adapters = {n: p.detach().clone() for n, p in first.model.named_parameters() if "lora_B" in n}
    resumed = train_in_process(run, TINY + [f"data.path={store}", f"init_from={base_dir}", "finetune.mode=lora",
                                            "trainer.max_steps=2", "resume=auto"])  # fmt: skip
    assert resumed.pos.step == 2
    now = dict(resumed.model.named_parameters())
    assert all(torch.equal(now[n], w) for n, w in adapters.items()) and any(w.abs().sum() > 0 for w in adapters.values())


def test_a_fine_tuned_export_is_a_policy_of_the_embodiment_it_was_fine_tuned_on(base, tmp_path, tiny_store):
    """The base knows "arm"; fine-tuned on "biarm" data, load_policy defaults to "biarm" (and still takes "arm" when
    named). The export records every store behind it, the base's included."""
    from robofm.policy import load_policy

    base_dir, store = base
    finetune(tmp_path / "run", base_dir, store)
    policy = load_policy(tmp_path / "run")
    assert policy.builder.embodiments == ["arm", "biarm"] and policy.embodiment == "biarm" and policy.state_dim == 5
    assert load_policy(tmp_path / "run", embodiment="arm").state_dim == 3
    assert policy.trained_stores == [str(store.resolve()), str(tiny_store.resolve())]


def test_the_finetune_recipe_runs_and_exports_its_best_validation(base, tmp_path):
    """experiment=finetune composes and runs (sized down to a few debug steps); with trainer.select=val_action
    the export holds the weights of the lowest val/action, which RUN/best/ keeps, not the last step's."""
    import json

    from safetensors.torch import load_file

    from tests.train.conftest import compose_config

    cfg, _ = compose_config(["experiment=finetune"])
    assert (cfg.trainer.select, cfg.optim.ema, cfg.optim.lr, cfg.model.size) == ("last", 0.99, 3e-4, "tiny")
    base_dir, _ = base
    store = make_store(tmp_path / "store", n=6, length=16, embodiment="biarm", state_dim=5, action_dim=4,
                       val_fraction=0.5)  # fmt: skip
    small = ["tokenizer.patch_size=4", "sequence.window_len=2", "sequence.text_len=16", "data.batch_size=4",
             "data.num_workers=0", "data.val_batches=2", "trainer.tensorboard=false", "trainer.precision=fp32",
             "trainer.max_steps=6", "trainer.val_every=1", "trainer.checkpoint_every=0", "optim.warmup_steps=1",
             "optim.lr=3e-2", "optim.ema=0", "trainer.select=val_action", "data.shift=2"]  # fmt: skip
    run = tmp_path / "run"
    trainer = train_in_process(run, ["experiment=finetune", f"init_from={base_dir}", f"data.path={store}", *small])
    assert trainer.train_ds.shift == 2 and trainer.val_ds.shift == 0  # validation scores unshifted windows
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["val/action"] for r in rows if "val/action" in r}
    assert sorted(val) == [1, 2, 3, 4, 5, 6]
    best = min(val, key=val.get)
    selected = json.loads((run / "export" / "trained_on.json").read_text())["selected"]
    assert selected == {"step": best, "val/action": val[best]}
    exported = load_file(str(run / "export" / "model.safetensors"))
    kept = load_file(str(run / "best" / "model.safetensors"))
    assert all(torch.equal(exported[k], kept[k]) for k in kept)


def test_norm_base_keeps_the_base_statistics_of_a_known_embodiment(base, tmp_path, caplog):
    """finetune.norm=base: a state or action bin means what it meant in pretraining, and the log says which
    dimensions of the new data leave the base's range; the default fits the data."""
    base_dir, _ = base
    pre = from_pretrained(base_dir).builder
    same = make_store(tmp_path / "arm", n=2, length=24)  # the base's embodiment; longer: other statistics
    fitted = finetune(tmp_path / "data", base_dir, same).builder
    with caplog.at_level("WARNING", logger="robofm.train.finetune"):
        kept = finetune(tmp_path / "base", base_dir, same, "finetune.norm=base").builder
    assert "finetune.norm=base: state dims [0] of 'arm'" in caplog.text  # state[t, 0] = t runs to 23, not 15
    for name in ("state_norm", "action_norm"):
        base_lo, base_hi = getattr(pre, name).bounds["arm"]
        lo, hi = getattr(kept, name).bounds["arm"]
        assert lo.tolist() == base_lo.tolist() and hi.tolist() == base_hi.tolist()
    assert fitted.state_norm.bounds["arm"][1].tolist() != pre.state_norm.bounds["arm"][1].tolist()
    card = (tmp_path / "base" / "export" / "README.md").read_text()
    assert "the base's normalization statistics" in card
    with pytest.raises(UsageError, match="finetune.norm"):
        FinetuneConfig(norm="dataset")
