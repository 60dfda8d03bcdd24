"""Connecting to the Kubernetes API: building a ``kubernetes_asyncio`` client from in-cluster
service-account credentials or from a kubeconfig, and the coordinates of the resources we watch.

Why ``kubernetes_asyncio``: it is the maintained asyncio port of the official client, generated
from the same OpenAPI spec (so TokenReview, SubjectAccessReview and the custom-objects API are all
there, typed as the server sends them), it reads kubeconfig files with every auth plugin the
official client supports (exec, OIDC, tokens, client certificates) and in-cluster service-account
tokens with rotation. We only use its request layer for list and watch and parse the JSON stream
ourselves, so bookmarks, 410 Gone and reconnects are under our control.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from typing import Any

import kubernetes_asyncio.client as _client
import kubernetes_asyncio.config as _config

__all__ = [
    "INFERENCE_MODEL_REWRITES",
    "INFERENCE_OBJECTIVES",
    "INFERENCE_POOLS",
    "LLMD_INFERENCE_MODEL_REWRITES",
    "LLMD_INFERENCE_OBJECTIVES",
    "PODS",
    "Resource",
    "default_pool_namespace",
    "in_cluster",
    "make_api_client",
    "user_agent",
]

# The generated client is typed loosely; we go through ``Any`` at this one boundary.
k8s_client: Any = _client
k8s_config: Any = _config


@dataclass(frozen=True, slots=True)
class Resource:
    """Group, version and plural of a namespaced resource, and the kind of its items."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


PODS = Resource("", "v1", "pods", "Pod")
INFERENCE_POOLS = Resource("inference.networking.k8s.io", "v1", "inferencepools", "InferencePool")
INFERENCE_OBJECTIVES = Resource(
    "inference.networking.x-k8s.io", "v1alpha2", "inferenceobjectives", "InferenceObjective"
)
INFERENCE_MODEL_REWRITES = Resource(
    "inference.networking.x-k8s.io", "v1alpha2", "inferencemodelrewrites", "InferenceModelRewrite"
)
# llm-d-router v0.10 moved both APIs to the ``llm-d.ai`` group; a cluster may have either or both.
LLMD_INFERENCE_OBJECTIVES = Resource("llm-d.ai", "v1alpha2", "inferenceobjectives", "InferenceObjective")
LLMD_INFERENCE_MODEL_REWRITES = Resource(
    "llm-d.ai", "v1alpha2", "inferencemodelrewrites", "InferenceModelRewrite"
)


def default_pool_namespace() -> str:
    """``--pool-namespace`` when not given: ``$NAMESPACE`` (the chart sets it from the pod's
    namespace via the downward API), else ``default``, as the reference picker does."""
    return os.environ.get("NAMESPACE") or "default"


def in_cluster() -> bool:
    """True inside a pod: the kubelet sets ``KUBERNETES_SERVICE_HOST`` for every container."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


async def make_api_client(
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    incluster: bool | None = None,
    token_file: str | None = None,
    ca_file: str | None = None,
) -> Any:
    """A ``kubernetes_asyncio`` ``ApiClient``; the caller closes it (``await client.close()``).

    ``kubeconfig`` given → that file. Otherwise in a pod (or ``incluster=True``) → the mounted
    service-account token and CA (re-read when rotated; ``token_file``/``ca_file`` override the
    standard ``/var/run/secrets/kubernetes.io/serviceaccount`` paths). Otherwise ``$KUBECONFIG``
    or ``~/.kube/config``, as kubectl does.
    """
    configuration = k8s_client.Configuration()
    use_incluster = in_cluster() if incluster is None else incluster
    if kubeconfig is None and use_incluster:
        paths: dict[str, str] = {}
        if token_file is not None:
            paths["token_filename"] = token_file
        if ca_file is not None:
            paths["cert_filename"] = ca_file
        k8s_config.load_incluster_config(client_configuration=configuration, **paths)
    else:
        path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
        await k8s_config.load_kube_config(
            config_file=path, context=context, client_configuration=configuration, persist_config=False
        )
    client = k8s_client.ApiClient(configuration=configuration)
    client.user_agent = user_agent()  # audit logs and API priority-and-fairness see who calls
    return client


def user_agent() -> str:
    """``infergate/<version>``, the User-Agent of every request to the Kubernetes API."""
    try:
        version = importlib.metadata.version("infergate")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"infergate/{version}"
