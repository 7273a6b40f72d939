"""Entry point: `python3 -m hugepage_agent` and the `hugepage-agent` script."""

import sys

from hugepage_agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
