"""Request control: one inference request's life, independent of the protocol that carried it.

``director`` (resolve the model and objective, admit through flow control, schedule, retry before
the first byte, response hooks, metrics, access log), ``core`` (the protocol-free part the digital
twin also runs), ``parsing`` (OpenAI and Anthropic bodies), ``access`` (routes, API keys, limits,
control headers), ``headers`` (the picker protocol's header names), ``usage`` (token usage from
JSON and SSE).

May import: ``flowcontrol``, ``scheduling``, ``sources``, ``datastore``, ``config``, ``telemetry``,
``types``, ``errors``. Never an HTTP or gRPC library (aiohttp, grpc, multidict: an import-linter
contract): the data planes translate their protocol into ``Director`` calls.
"""
