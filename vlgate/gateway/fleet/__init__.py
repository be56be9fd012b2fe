"""The backends as a fleet: polling, slots, membership, DNS discovery, watchdog, reload."""
