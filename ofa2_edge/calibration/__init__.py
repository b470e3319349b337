"""Drive a device through the agent to fill its table: designs of subnets, end-to-end and block calibration."""
