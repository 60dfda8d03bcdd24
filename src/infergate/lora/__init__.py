"""The LoRA syncer sidecar: keeps a model server's runtime adapters equal to a vLLMLoRAConfig file.

Talks to the model server over HTTP only and imports nothing from the gateway.
"""
