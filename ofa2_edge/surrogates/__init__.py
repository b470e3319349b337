"""Predictors of a measured quantity (latency) from an arch: LUT sums, linear, trees, prior-corrected kinds."""
