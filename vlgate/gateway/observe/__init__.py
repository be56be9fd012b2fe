"""What operators see: metrics, usage per key, timelines, fleet scrapes, the status page."""
