"""Pure deciders: what Kubernetes objects a Blacktop resource implies. No I/O here."""
