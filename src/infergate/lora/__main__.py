"""``python -m infergate.lora``: the LoRA syncer without the main CLI."""

import sys

from infergate.lora.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
