"""robofm-eval: held-out metrics of a pretrained model (actions and imagined frames) against baselines."""
