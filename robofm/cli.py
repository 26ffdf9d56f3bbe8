"""The command line of the key=value commands (robofm-eval, robofm-viz, robofm-eval-sim), built from one typed
dataclass per command: its fields are the keys, their types and their defaults; a field without a default is a
required key. The conventions are robofm-train's (Hydra): `key=value` overrides, dotted keys (`data.path`),
`--cfg job` prints the resolved config as YAML, and `--help` lists every key with its type and default.

Values: str as given; int, float; bool as true/false (also 1/0, yes/no); a tuple as comma-separated items
(`horizons=1,4,16`, or `[1,4,16]`); `null` for a field that may be None. A later `key=` wins over an earlier one.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from robofm.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Key:
    """One command-line key: the dataclass field it sets, how a value is read, and what --help says of it."""

    name: str  # as typed on the command line, e.g. data.path
    field: str  # the dataclass field, e.g. data_path
    type_name: str
    parse: Callable[[str], Any]
    required: bool
    default: Any
    help: str


def keys_of(schema: type, names: Mapping[str, str] | None = None) -> dict[str, Key]:
    """The keys of a dataclass schema, in field order, by command-line name. `names` renames fields whose key is
    not the field's name ({"data_path": "data.path"}); a field's metadata "help" is its line in --help."""
    hints = typing.get_type_hints(schema)
    names = names or {}
    keys = {}
    for f in dataclasses.fields(schema):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else f.default if f.default is not dataclasses.MISSING else f.default_factory()
        name = names.get(f.name, f.name)
        tp = hints[f.name]
        keys[name] = Key(name, f.name, _type_name(tp), _reader(tp), required, default, f.metadata.get("help", ""))
    return keys


def load_settings[T](schema: type[T], tokens: Iterable[str], names: Mapping[str, str] | None = None) -> T:
    """key=value tokens -> schema(**typed values), defaults for the keys not given. Raises UsageError, naming the
    key, for a token that is not key=value, an unknown key, a value of the wrong type or a missing required key."""
    keys = keys_of(schema, names)
    values = {}
    for token in tokens:
        key, value = _split(token, keys)
        values[keys[key].field] = _read(keys[key], value)
    missing = [k.name for k in keys.values() if k.required and k.field not in values]
    if missing:
        raise UsageError(f"missing {', '.join(f'{k}=...' for k in missing)} (required)")
    return schema(**values)


def parse_command[T](
    schema: type[T],
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str = "",
    names: Mapping[str, str] | None = None,
) -> T:
    """The command line `argv` (sys.argv[1:] when None) of a key=value command -> its config.

    `-h`/`--help` prints the usage, `description` and every key with its type and default, and exits 0; `--cfg job`
    (or `--cfg`, `-c job`) prints the resolved config as YAML (`???` for a required key not given) and exits 0. On a
    usage error (see load_settings, or an unknown option) it prints one line, `PROG: error: ...`, and exits 2."""
    tokens = list(sys.argv[1:] if argv is None else argv)
    try:
        settings, flags = _options(tokens)
        if "help" in flags:
            print(help_text(schema, prog, description, names))
            raise SystemExit(0)
        if "cfg" in flags:
            print(config_yaml(schema, settings, names), end="")
            raise SystemExit(0)
        return load_settings(schema, settings, names)
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def settings_of(cfg: Any, names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A config as {command-line key: value}, e.g. {"data.path": ...} for the field data_path."""
    names = names or {}
    return {names.get(f.name, f.name): getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def help_text(schema: type, prog: str, description: str = "", names: Mapping[str, str] | None = None) -> str:
    """--help: usage, the description, then one line per key: name, type, default (or "required"), help."""
    keys = keys_of(schema, names).values()
    rows = [(k.name, k.type_name, "required" if k.required else _show(k.default), k.help) for k in keys]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"usage: {prog} key=value ... [--cfg job] [-h]", ""]
    if description:
        lines += [description.strip(), ""]
    lines.append("keys (key=value; dotted keys as written; tuples comma-separated; null for None):")
    lines += [f"  {n:<{widths[0]}}  {t:<{widths[1]}}  {d:<{widths[2]}}  {h}".rstrip() for n, t, d, h in rows]
    lines += [
        "",
        "options:",
        "  --cfg job   print the resolved config as YAML and exit",
        "  -h, --help  show this help and exit",
    ]
    return "\n".join(lines)


def config_yaml(schema: type, tokens: Iterable[str], names: Mapping[str, str] | None = None) -> str:
    """The config that `tokens` resolve to, as YAML with dotted keys nested (as Hydra's --cfg job prints it);
    `???` for a required key not given. Raises UsageError as load_settings does, except for missing keys."""
    from omegaconf import OmegaConf

    keys = keys_of(schema, names)
    given = {}
    for token in tokens:
        key, value = _split(token, keys)
        given[key] = _read(keys[key], value)
    tree: dict[str, Any] = {}
    for k in keys.values():
        value = given[k.name] if k.name in given else "???" if k.required else k.default
        *parents, leaf = k.name.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return OmegaConf.to_yaml(OmegaConf.create(tree))


def _options(tokens: list[str]) -> tuple[list[str], set[str]]:
    """(key=value tokens, {"help", "cfg"} flags present)."""
    settings, flags = [], set()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in ("-h", "--help"):
            flags.add("help")
        elif token in ("--cfg", "-c", "--cfg=job"):
            flags.add("cfg")
            if token != "--cfg=job" and i + 1 < len(tokens) and "=" not in tokens[i + 1] and tokens[i + 1][:1] != "-":
                i += 1
                if tokens[i] != "job":
                    raise UsageError(f"--cfg {tokens[i]}: only --cfg job (this command's config) is printed")
        elif token.startswith("-") and "=" not in token:
            raise UsageError(f"unknown option {token!r}; options are --cfg job and --help, settings are key=value")
        else:
            settings.append(token)
        i += 1
    return settings, flags


def _split(token: str, keys: Mapping[str, Key]) -> tuple[str, str]:
    key, sep, value = token.partition("=")
    if not sep:
        raise UsageError(f"{token!r} is not key=value: expected key=value with key one of {', '.join(keys)}")
    if key not in keys:
        raise UsageError(f"unknown key {key!r}: expected key=value with key one of {', '.join(keys)}")
    return key, value


def _read(key: Key, value: str) -> Any:
    try:
        return key.parse(value)
    except ValueError:
        raise UsageError(f"bad value for {key.name}: {value!r} is not {key.type_name}") from None


def _reader(tp: Any) -> Callable[[str], Any]:
    """A str -> value function for a field type: str, int, float, bool, tuple[X, ...], and X | None."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported config field type {tp}: only X | None unions")
        read = _reader(inner[0])
        return lambda v: None if v == "null" else read(v)
    if origin is tuple:
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"unsupported config field type {tp}: only tuple[X, ...]")
        read = _reader(args[0])
        return lambda v: tuple(read(x.strip()) for x in v.strip().strip("[]").split(",") if x.strip())
    if tp is bool:
        return _bool
    if tp in (str, int, float):
        return tp
    raise TypeError(f"unsupported config field type {tp}")


def _bool(value: str) -> bool:
    word = value.strip().lower()
    if word in ("true", "1", "yes"):
        return True
    if word in ("false", "0", "no"):
        return False
    raise ValueError(value)


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is tuple:
        return f"tuple[{_type_name(args[0])}, ...]"
    return getattr(tp, "__name__", str(tp))


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return repr(value) if value == "" else str(value)
