"""Benchmarks: ``infergate bench`` (load a URL with a workload, compare routing strategies, run the
digital twin) and the workload library (``workloads/*.yaml``).

A black box over HTTP for load generation (``loadgen``, ``steady``, ``matrix``, ``peers``); the
digital twin (``twin``) runs the gateway's own scheduler and flow control in virtual time, so it
imports them, never a copy. Figures it produces go to docs/benchmarks.md with command and machine.

May import: ``scheduling``, ``flowcontrol``, ``requestcontrol``, ``config``, ``types`` (the twin),
``simulator`` (virtual replicas); the gateway never imports ``bench``.
"""
