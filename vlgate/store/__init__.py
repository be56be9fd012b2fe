"""Stored state: responses, conversations, files, batch jobs (interface in `base.py`)."""
