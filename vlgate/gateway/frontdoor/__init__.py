"""The front door: what every request meets first (connection limits, drain, auth, per-key limits)."""
