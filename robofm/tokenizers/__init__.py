"""Tokenizers: text (bytes or a local tokenizer.json), actions (binning or FAST), images (pixel patches or VAE latents). Each comes with its inverse."""
