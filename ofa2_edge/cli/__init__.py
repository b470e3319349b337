"""The `ofa2-edge` command line."""
