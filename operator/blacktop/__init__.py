"""Blacktop: a Kubernetes operator that turns a platform team's infrastructure into a self-service product."""

__version__ = "0.1.0"
