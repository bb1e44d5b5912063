"""The web dashboard: one static page at `/` that drives the public /v1 JSON API."""
