"""Converter sources. Each module has HELP, add_arguments(parser) and from_args(args) -> Source."""

import importlib
from types import ModuleType

SOURCE_MODULES = {
    "lerobot": "robofm.data.sources.lerobot",
    "hdf5": "robofm.data.sources.hdf5",
    "video": "robofm.data.sources.video",
}


def source_module(kind: str) -> ModuleType:
    return importlib.import_module(SOURCE_MODULES[kind])
