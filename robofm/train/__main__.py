"""`robofm-train` (or `python -m robofm.train`, which torchrun launches): a Hydra application.

    robofm-train experiment=demo
    robofm-train experiment=debug data.path=STORE trainer.max_steps=20 hydra.run.dir=DIR
    torchrun --nproc_per_node=4 -m robofm.train experiment=demo trainer=ddp

`robofm-finetune init_from=EXPORT_DIR data.path=STORE [finetune.mode=full|frozen|lora] ...` is the same
application starting from a pretrained base (see robofm.train.finetune).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from robofm.errors import RobofmError
from robofm.train.config import TrainConfig, register

register()
RECORDED_ELSEWHERE = ("experiment=", "hydra.", "data.path=", "init_from=", "+init_from=", "resume=")  # not the recipe


@hydra.main(config_path="pkg://robofm.conf", config_name="train", version_base="1.3")
def run(cfg: DictConfig) -> None:
    from robofm.train.loop import Trainer  # after Hydra has parsed the command line: `--help` stays fast

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        typed: TrainConfig = OmegaConf.to_object(cfg)  # checks choices and ranges (UsageError naming the key)
        hydra_cfg = HydraConfig.get()
        command = {"experiment": hydra_cfg.runtime.choices.get("experiment"),
                   "overrides": [o for o in hydra_cfg.overrides.task if not o.startswith(RECORDED_ELSEWHERE)]}  # fmt: skip
        Trainer(typed, run_dir, OmegaConf.to_yaml(cfg, resolve=True), command).fit()
    except RobofmError as e:
        logging.getLogger("robofm").error("%s", e)
        sys.exit(2)


def main() -> None:
    run()


def finetune_main() -> None:
    """`robofm-finetune`: robofm-train that must start from a base (init_from=...)."""
    args = sys.argv[1:]
    if not any(a.startswith(("init_from=", "+init_from=")) for a in args) and not {"-h", "--help"} & set(args):
        print("robofm-finetune: error: give init_from=EXPORT_DIR, the pretrained base (an export or run folder)",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
    run()


if __name__ == "__main__":
    main()
