"""The version of robofm, recorded in every store's and export's provenance."""

__version__ = "0.1.0"
