"""``python -m infergate`` is the same as the ``infergate`` command."""

from infergate.cli import main

main()
