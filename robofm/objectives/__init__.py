"""robofm.objectives."""
