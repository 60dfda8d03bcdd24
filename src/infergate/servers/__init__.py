"""The admin plane: everything served beside the inference path, and the listener it runs on.

``admin`` (``/metrics``, ``/healthz``, ``/readyz``, ``/debug/endpoints``), ``liveview`` (the browser
view), ``metrics_auth`` (bearer tokens, TokenReview), ``auth`` (API keys for the inference
listener), ``listener`` (a TCP listener with its own connection budget, also used by the built-in
proxy), ``children`` (child processes that die with the gateway). The data planes that carry
requests live in ``infergate.dataplanes``.

May import: request control and the layers below it, aiohttp; never ``dataplanes``, ``app``, ``cli``.
"""
