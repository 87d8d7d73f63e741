"""OpenTofu/Terraform: module inspection, workspaces, runs and plan summaries."""
