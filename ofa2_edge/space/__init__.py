"""The search space: Arch and its encodings, the network's static plan, and the static costs of a subnet."""
