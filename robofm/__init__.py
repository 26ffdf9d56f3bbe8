"""robofm: a pretrainer for robot foundation models."""

__version__ = "0.1.0"


def load_policy(path, **kwargs):
    """The VLA policy of an export or run folder: `reset()` and `select_action(observation)` (robofm.policy)."""
    from robofm.policy import load_policy as load

    return load(path, **kwargs)
