"""robofm-viz: imagined rollouts beside the real episode (videos, contact sheets, plots, one HTML report)."""
