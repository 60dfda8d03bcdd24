"""infergate: an inference gateway for fleets of OpenAI-compatible LLM servers.

Import names from the module that defines them (Starlette style); this package exports only the version.
"""

__version__ = "0.1.0"
