"""ofa2-edge: measure real latency of Once-for-All subnets on edge devices, fit latency
surrogates, run the OFA² multi-objective search and ship verified per-device bundles."""

__version__ = "0.1.0"
