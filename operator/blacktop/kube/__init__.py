"""Adapter to the Kubernetes API: a small async client, resource paths, events and typed status writes."""
