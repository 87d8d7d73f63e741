"""Prometheus metrics of the platform itself, in an explicit registry (nothing registered at import)."""
