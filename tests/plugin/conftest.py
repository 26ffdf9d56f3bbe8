from tests.train.conftest import tiny_store  # noqa: F401  (the debug store the export trains on)
