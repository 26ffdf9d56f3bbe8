"""robofm: a pretrainer for robot foundation models."""

__version__ = "0.1.0"
