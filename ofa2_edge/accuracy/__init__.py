"""Predicted ImageNet top-1 of subnets: OFA's official predictor and user-fitted ones."""
