"""``python -m infergate.pdsidecar``: the P/D sidecar without the main CLI."""

import sys

from infergate.pdsidecar.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
