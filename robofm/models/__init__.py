"""robofm.models."""
