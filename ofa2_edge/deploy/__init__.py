"""Deployment: pick a trade-off from a run, build verified per-device bundles, dashboard."""
