"""Launcher: start and supervise one llama-server per GPU."""
