"""Devices: the inventory, the transports that reach them, and measurement orchestration."""
