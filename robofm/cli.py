"""Command-line helpers shared by the key=value commands (robofm-eval, robofm-viz)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable


def parse_settings(parser: argparse.ArgumentParser, tokens: Iterable[str], types: dict[str, Callable],
                   required: Iterable[str] = ()) -> dict:  # fmt: skip
    """key=value tokens -> {key: types[key](value)}; parser.error (exit 2) for an unknown key, a bad value or a
    missing required key."""
    values = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or key not in types:
            parser.error(f"expected key=value with key one of {', '.join(types)}; got {token!r}")
        try:
            values[key] = types[key](value)
        except ValueError:
            parser.error(f"bad value for {key}: {value!r}")
    missing = [k for k in required if k not in values]
    if missing:
        parser.error(f"missing {', '.join(f'{k}=...' for k in missing)}")
    return values
