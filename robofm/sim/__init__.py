"""Simulated environments for evaluating robofm policies."""
