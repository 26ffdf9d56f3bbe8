"""The model card of an export: RUN/export/README.md, in the Hugging Face Hub's format (YAML metadata, then
Markdown), so that `huggingface_hub`'s upload of the folder publishes it as it is.

It holds what the model was trained on (stores, tasks, embodiments, frames and hours, the data's licenses), the
model and its tokenization, the training config, the held-out results of every `robofm-eval` and
`robofm-eval-sim` run on it (EXPORT/evals/*.json, written by those commands), and how to load it with robofm,
LeRobot or the policy server. `write_model_card(export)` rebuilds it from the folder alone, so an evaluation can
refresh it on any machine.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml
from safetensors import safe_open

CARD, EVALS, TRAIN_CONFIG = "README.md", "evals", "train_config.yaml"
MAX_TASKS = 200  # tasks listed per store in trained_on.json (the count is always exact)


def data_summary(stores: list, split: str | None) -> list[dict]:
    """What a model trains on, per store (robofm.data.store.EpisodeStore): episodes, frames and hours of `split`
    (None: all), tasks, embodiments, cameras, and the licenses and sources its conversions recorded."""
    out = []
    for store in stores:
        eps = [e for e in store.episodes if split is None or e.split == split]
        frames = sum(e.length for e in eps)
        tasks = sorted({e.task for e in eps})
        provenance = store.manifest.get("provenance", [])
        out.append({
            "path": str(Path(store.root).resolve()), "split": split, "episodes": len(eps), "frames": frames,
            "hours": frames / store.fps / 3600, "fps": store.fps, "tasks": len(tasks), "task_names": tasks[:MAX_TASKS],
            "embodiments": {name: {"state_dim": emb["state_dim"], "action_dim": emb["action_dim"]}
                            for name, emb in store.manifest["embodiments"].items()},
            "cameras": store.manifest["cameras"],
            "licenses": sorted({p["license"] for p in provenance if isinstance(p, dict) and p.get("license")}),
            "sources": [p["source"] for p in provenance if isinstance(p, dict) and p.get("source")],
        })  # fmt: skip
    return out


def export_of(path: str | Path) -> Path | None:
    """The export folder an evaluated path names (an export, or a run with one), or None (a checkpoint)."""
    path = Path(path)
    for folder in (path, path / "export"):
        if (folder / "model.json").is_file():
            return folder
    return None


def record_eval(export: Path, kind: str, result: dict) -> Path:
    """Keep a summary of an evaluation of `export` in EXPORT/evals/ (one file per command, store or task and
    setting: a rerun replaces it) and rebuild the card. Returns the card's path."""
    key = json.dumps({k: result.get(k) for k in ("store", "split", "task", "episodes", "seed")}, sort_keys=True)
    folder = Path(export) / EVALS
    folder.mkdir(exist_ok=True)
    name = f"{kind}-{hashlib.blake2b(key.encode(), digest_size=4).hexdigest()}.json"
    kept = {k: v for k, v in result.items() if k != "rollouts"}  # per-episode detail stays in the command's output
    (folder / name).write_text(json.dumps({"kind": kind, **kept}, indent=1, default=str))
    return write_model_card(export)


def write_model_card(export: Path) -> Path:
    """Write EXPORT/README.md from the export's files; returns its path."""
    export = Path(export)
    model = _json(export / "model.json")
    seq = _json(export / "tokenization" / "sequence.json")
    trained = _json(export / "trained_on.json")
    data = trained.get("data") or []
    evals = [_json(p) for p in sorted((export / EVALS).glob("*.json"))] if (export / EVALS).is_dir() else []
    licenses = sorted({lic for d in data for lic in d.get("licenses", [])})
    tasks = sorted({t for d in data for t in d.get("task_names", [])})
    meta = {
        "library_name": "robofm",
        "license": licenses[0] if len(licenses) == 1 else ("other" if licenses else "unknown"),
        "pipeline_tag": "robotics",
        "tags": ["robotics", "vla", "world-model", "robofm", "lerobot"],
    }
    title = "fine-tuned" if trained.get("init_from") else "pretrained"
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
             f"# robofm {model.get('size', '?')} VLA ({title})", "",
             "A vision-language-action model trained with robofm: next-token "
             "prediction of language and discretized actions, and action-conditioned next-frame prediction by "
             "diffusion, over interleaved camera, state and action tokens.", ""]  # fmt: skip
    lines += _trained_on(trained, data, licenses, tasks)
    lines += _model(export, model, seq, trained)
    lines += _recipe(trained.get("recipe"))
    lines += _evaluations(evals)
    lines += _how_to_load(export)
    if (export / TRAIN_CONFIG).is_file():
        lines += ["## Training config", "", "The resolved `robofm-train` config of the run:", "",
                  "```yaml", (export / TRAIN_CONFIG).read_text().strip(), "```", ""]  # fmt: skip
    path = export / CARD
    path.write_text("\n".join(lines))
    return path


def _trained_on(trained: dict, data: list[dict], licenses: list[str], tasks: list[str]) -> list[str]:
    lines = ["## Training data", ""]
    if trained.get("init_from"):
        base = trained.get("base_stores")
        lines += [f"Fine-tuned from `{trained['init_from']}`"
                  + (f", itself trained on {', '.join(f'`{s}`' for s in base)}." if base else
                     " (the base's own data is not recorded in this export)."), ""]  # fmt: skip
    if not data:
        stores = trained.get("stores") or []
        lines += [("Stores: " + ", ".join(f"`{s}`" for s in stores)) if stores else
                  "Not recorded (an export written before robofm kept its data summary).", ""]  # fmt: skip
        return lines
    lines += ["| store | split | episodes | frames | hours | fps | tasks | embodiments (state/action dims) | cameras "
              "| license |", "|---|---|---:|---:|---:|---:|---:|---|---|---|"]  # fmt: skip
    for d in data:
        embs = ", ".join(f"{n} ({e['state_dim']}/{e['action_dim']})" for n, e in d["embodiments"].items())
        cams = ", ".join(f"{c} {h}x{w}" for c, (h, w) in d["cameras"].items())
        lines.append(f"| `{d['path']}` | {d['split'] or 'all'} | {d['episodes']} | {d['frames']} | {d['hours']:.2f} | "
                     f"{d['fps']:g} | {d['tasks']} | {embs} | {cams} | {', '.join(d['licenses']) or 'not recorded'} |")
    total = sum(d["frames"] for d in data)
    lines += ["", f"In all {sum(d['episodes'] for d in data)} episodes, {total} frames "
              f"({sum(d['hours'] for d in data):.2f} hours).", ""]  # fmt: skip
    if tasks:
        shown = tasks[:20]
        lines += [f"Tasks ({sum(d['tasks'] for d in data)}): " + "; ".join(f"\"{t}\"" for t in shown)
                  + (" ..." if len(tasks) > len(shown) else ""), ""]  # fmt: skip
    sources = sorted({s for d in data for s in d.get("sources", [])})
    if sources:
        lines += ["Converted from: " + ", ".join(f"`{s}`" for s in sources), ""]
    lines += ["**License of the data**: " + (", ".join(licenses) if licenses else
              "not recorded (`robofm-convert --license` records it); the licenses of the sources apply") + ".", ""]
    return lines


def _model(export: Path, model: dict, seq: dict, trained: dict) -> list[str]:
    params = _parameters(export / "model.safetensors")
    s = seq.get("sequence", {})
    embs = seq.get("embodiments", [])
    lines = ["## Model", "",
             f"- Backbone: `{model.get('size')}`, width {model.get('dim')}, depth {model.get('depth')}, "
             f"{model.get('heads')} heads, FFN {model.get('ffn_dim')}, vocabulary {model.get('vocab_size')}"
             + (f"; {params / 1e6:.2f}M parameters" if params else ""),
             f"- Observations: cameras {', '.join(seq.get('cameras', []))} at {seq.get('frame_shape', ['?'])[0]}x"
             f"{seq.get('frame_shape', ['?', '?'])[1]}; windows of {s.get('window_len')} steps, {s.get('stride')} "
             "control steps apart; the actions between two observations are one chunk",
             f"- Embodiments: {', '.join(embs)} (state {seq.get('state_dim')}, action {seq.get('action_dim')} dims at "
             "most; state and action in robot units, normalized inside the model)"]  # fmt: skip
    if trained.get("selected"):
        sel = trained["selected"]
        lines.append(f"- Weights of step {sel.get('step')}" + (f" (lowest val/action {sel['val/action']:.4f})"
                                                               if "val/action" in sel else ""))  # fmt: skip
    return [*lines, ""]


def _recipe(recipe: dict | None) -> list[str]:
    """The recipe that made the export, in a sentence (exports before robofm recorded it have none)."""
    if not recipe:
        return []
    command = " ".join([recipe["command"], *([f"experiment={recipe['experiment']}"] if recipe.get("experiment") else []),
                        *recipe.get("overrides", [])])  # fmt: skip
    how = "full fine-tuning" if recipe["mode"] == "full" else recipe["mode"]  # or "from scratch"
    how = {"frozen": "fine-tuning with the Transformer blocks frozen", "lora": "LoRA fine-tuning"}.get(how, how)
    ema = f", EMA {recipe['ema']:g} of the weights" if recipe.get("ema") else ""
    shift = f", random shifts of up to {recipe['shift']} px" if recipe.get("shift") else ""
    frames = "" if recipe.get("frame_weight", 1) else ", without the frame objective"
    norm = ", the base's normalization statistics for the embodiments it knows" if recipe.get("norm") == "base" else ""
    return ["## Recipe", "",
            f"`{command}`: {how}, {recipe['steps']} steps of {recipe['batch_size']} windows at lr {recipe['lr']:g} "
            f"({recipe['schedule']}, {recipe['warmup_steps']} warmup steps){ema}{shift}{frames}{norm}.", ""]  # fmt: skip


def _evaluations(evals: list[dict]) -> list[str]:
    lines = ["## Evaluation", ""]
    if not evals:
        return [*lines, "Not evaluated yet: `robofm-eval checkpoint=EXPORT data.path=STORE` (held-out windows against "
                "baselines) and `robofm-eval-sim policy=EXPORT task=...` (closed-loop success) record their results "
                "here.", ""]  # fmt: skip
    for e in evals:
        if e["kind"] == "robofm-eval":
            lines += [f"**`robofm-eval`** on {e.get('windows')} `{e.get('split')}` windows of `{e.get('store')}`:", ""]
            mse = e.get("actions", {}).get("mse", {})
            if mse:
                lines += ["| actions: MSE (robot units) | " + " | ".join(mse) + " |",
                          "|---|" + "---:|" * len(mse), "| | " + " | ".join(_fmt(v) for v in mse.values()) + " |", ""]
            for h, row in (e.get("world_model") or {}).items():
                copy = row.get("copy_last", {})
                best = max(row.get("sampler_steps", {}).values(), key=lambda r: r["model"]["psnr"], default=None)
                if best:
                    lines.append(f"- imagined frames at horizon {h}: PSNR {_fmt(best['model']['psnr'])} against "
                                 f"{_fmt(copy.get('psnr'))} for copying the last frame")  # fmt: skip
            for v in e.get("verdicts", []):
                word = {True: "PASS", False: "FAIL", None: "n/a"}.get(v.get("passed"), "?")
                lines.append(f"- {word}: {v.get('bar')}: {v.get('detail')}")
            lines.append("")
        elif e["kind"] == "robofm-eval-sim":
            lo, hi = e.get("ci95", [None, None])
            lines += [f"**`robofm-eval-sim`** on `{e.get('task')}`: {e.get('successes')}/{e.get('episodes')} episodes "
                      f"succeeded ({_pct(e.get('success_rate'))}, 95% CI {_pct(lo)}-{_pct(hi)}), on simulator layouts "
                      f"{'no training episode used' if e.get('train_stores') else 'not checked against the training data'}.",
                      ""]  # fmt: skip
    return lines


def _how_to_load(export: Path) -> list[str]:
    return ["## How to use it", "",
            f"`EXPORT` below is this folder (`{export}` where it was written), or a download of it.", "",
            "With robofm installed (a checkout of robofm: `make test`, or `pip install -e .`):", "", "```python",
            "import robofm", "", "policy = robofm.load_policy(EXPORT)  # an episode's history is kept inside",
            "policy.reset()",
            'action = policy.select_action({"images": {camera: hxwx3_uint8, ...}, "state": state, "task": "..."})',
            "```", "",
            "With LeRobot, through robofm's plugin (`pip install -e plugins/lerobot_policy_robofm` in the checkout; "
            "`make` installs it), which LeRobot discovers:", "", "```bash",
            "lerobot-eval --policy.path=EXPORT --env.type=... --eval.n_episodes=20", "```", "",
            "As a policy server for a robot outside LeRobot (websocket, msgpack-encoded numpy arrays):", "", "```bash",
            "robofm-serve policy=EXPORT host=0.0.0.0 port=8000", "```", "", "```python",
            "from robofm.serve import Client", "", 'client = Client("ROBOT_PC", 8000)',
            "action = client.select_action(observation)  # the observation load_policy takes", "```", ""]  # fmt: skip


def _parameters(weights: Path) -> int:
    """Parameters in a safetensors file, from its header (nothing is loaded)."""
    try:
        with safe_open(str(weights), "pt") as f:
            total = 0
            for key in f.keys():  # noqa: SIM118 -- safe_open is not a mapping
                n = 1
                for d in f.get_slice(key).get_shape():
                    n *= d
                total += n
            return total
    except Exception:  # noqa: BLE001 -- a card is written whatever the weights file holds
        return 0


def _json(path: Path) -> dict:
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _fmt(x: object) -> str:
    return "-" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def _pct(x: object) -> str:
    return "?" if x is None else f"{x:.0%}"
