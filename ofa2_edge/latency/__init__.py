"""Latency of subnets on one device: block lookup tables and fitted surrogate predictors."""
