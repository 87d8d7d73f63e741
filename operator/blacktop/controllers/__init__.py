"""Reconcilers: idempotent functions that converge the cluster on what a resource asks for.

They use the adapters (Kubernetes client) and the pure deciders, and know nothing of Kopf: the
handlers call them, and tests can call them directly against a real apiserver.
"""
