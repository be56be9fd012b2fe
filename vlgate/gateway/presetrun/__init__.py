"""Presets on the request path: post-processing answers and the pipelines the gateway runs."""
