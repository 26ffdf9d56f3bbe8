"""The tokenization tests share the model tests' tiny store and builder (tests/models/conftest.py)."""

from tests.models.conftest import fast, tiny  # noqa: F401  (fixtures)
