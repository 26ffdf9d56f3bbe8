"""robofm: a pretrainer for robot foundation models."""

from robofm.version import __version__

__all__ = ["__version__", "load_policy"]


def load_policy(path, **kwargs):
    """The VLA policy of an export or run folder: `reset()` and `select_action(observation)` (robofm.policy)."""
    from robofm.policy import load_policy as load

    return load(path, **kwargs)
