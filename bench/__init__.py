"""Benchmark scripts: ``python bench/bench_<name>.py`` runs one measurement and prints the figures
that docs/benchmarks.md records with their command and machine.

Claims about speed live here and nowhere else: tests assert behaviour, never wall-clock time, so a
timing check belongs in a script of this folder. The scripts sit outside the product, so they may
import any part of ``infergate`` (mostly ``infergate.bench``: workloads, load generator, digital
twin) and start real processes; ``src`` never imports them (a test may, to check a script's own
logic). They are linted and type-checked like ``src`` (``make lint types``); run long ones with
``nice -n 10``.
"""
