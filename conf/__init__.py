"""The Hydra configs of `robofm-train`: installed as the package robofm.conf (see pyproject.toml), composed from
`pkg://robofm.conf`."""
