"""Sending a request to a backend: retries, outlier ejection, the HTTP/1.1 wire."""
