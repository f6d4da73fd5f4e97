"""Data: manifests, the synthetic world, format adapters, torch datasets."""
