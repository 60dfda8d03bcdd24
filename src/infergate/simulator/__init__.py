"""infergate.simulator: a CPU-only stand-in for a vLLM server (``infergate simulate``).

The engine model (``engine``, ``kvcache``, ``adapters``, ``profile``, ``tokenizer``, ``drivers``,
``kvevents``) runs on the wall clock or in virtual time; the process around it (``args``, ``cli``,
``server``, ``openai_api``, ``generation``, ``metrics``, ``peer_api``) speaks vLLM's HTTP API and
metrics. The gateway talks to it only over HTTP and never imports it (import-linter contract).
"""
