"""Entry point of ``python3 agent.pyz ...`` and ``python -m device_agents ...``."""

import sys

from device_agents.cli import main

if __name__ == "__main__":
    sys.exit(main())
