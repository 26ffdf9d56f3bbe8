"""robofm.train: the training command, its configuration, checkpoints and parallelism."""
