"""Where a gateway's pool comes from: manifest files, or an InferencePool watched in a cluster.

:class:`~infergate.app.gateway.Gateway` serves ``up``, ``serve``, ``epp -f`` and ``epp --pool-name``
with one lifecycle; only the :class:`PoolSource` differs. A source fills the datastore (pool,
endpoints, objectives, rewrites), says when the gateway may route, and supplies what only it knows:
the default scheduler for the servers it describes, the HTTPRoute prefixes and listener for a data
plane that needs them, per-objective annotations and API-key Secrets.

- :class:`ManifestPoolSource`: static; the pool is known as soon as the files are applied.
- :class:`KubernetesPoolSource`: the Kubernetes API client and
  :class:`~infergate.sources.kubernetes.KubernetesSource` (reflectors, status writing); the pool is
  known once the watches have synced and the InferencePool exists, and may go away again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, Protocol

from infergate.api.loader import ManifestSet
from infergate.config.picker import EndpointPickerConfig, default_picker_config
from infergate.config.settings import Settings
from infergate.datastore.store import Datastore
from infergate.errors import ConfigError
from infergate.requestcontrol.access import Authenticator
from infergate.servers.auth import api_keys_from_manifests
from infergate.sources.kubernetes import KubernetesSource
from infergate.sources.manifests import apply_manifests
from infergate.types import EndpointMeta, PoolSpec

__all__ = ["MAX_TOKENS_ANNOTATION", "KubernetesPoolSource", "ManifestPoolSource", "PoolSource"]

MAX_TOKENS_ANNOTATION = "infergate.dev/max-tokens"


class PoolSource(Protocol):
    """What the gateway needs from wherever its pool is described."""

    manifests: ManifestSet | None
    """The manifest files, for a data plane that renders routes from them (Envoy); None in a cluster."""
    api_client: Any | None
    """The Kubernetes API client (metrics auth by TokenReview), once :meth:`open` made it."""

    def describe(self) -> str:
        """``namespace/name`` or the pool name, for logs and banners."""

    def attach(self, datastore: Datastore) -> None:
        """Fill ``datastore`` with what is known now (everything, for static sources)."""

    async def open(self) -> None:
        """Connect (a cluster client); nothing for static sources. Raises ConfigError."""

    async def run(self) -> None:
        """Keep the datastore current until cancelled (restarted with back-off if it fails)."""

    async def wait_pool(self) -> PoolSpec:
        """The pool, once it is known."""

    def pool_known(self) -> bool:
        """Routing is possible: synced, and the pool exists (it may be deleted later)."""

    def ready(self, datastore: Datastore) -> bool:
        """What ``/readyz`` reports beside the gateway's own state."""

    def listener(self) -> tuple[str, int]:
        """The Gateway listener's (host, port) to serve on when no port is set."""

    def route_prefixes(self, pool: PoolSpec) -> Sequence[str]: ...

    def default_picker(self) -> EndpointPickerConfig:
        """The scheduler used without ``--config``, fitted to the servers described."""

    def base_models(self) -> list[str]:
        """Models the servers serve as base models (not adapters), where the source knows them."""

    def objective_max_tokens(self) -> dict[str, int]:
        """``infergate.dev/max-tokens`` ceilings found on InferenceObjectives."""

    def api_keys(self) -> Authenticator | None:
        """Keys from Secrets labelled ``infergate.dev/api-keys``."""

    async def close(self) -> None: ...


class ManifestPoolSource:
    """The pool ``settings.pool`` (or the only one) of a set of loaded manifests, plus
    ``extra_endpoints`` (replicas ``infergate up`` started)."""

    api_client: Any | None = None

    def __init__(
        self,
        manifests: ManifestSet,
        pool_name: str | None = None,
        *,
        extra_endpoints: Sequence[EndpointMeta] = (),
    ) -> None:
        self.manifests: ManifestSet | None = manifests
        self._manifests = manifests
        self.pool: PoolSpec = manifests.pool_spec(pool_name)
        self._extra = tuple(extra_endpoints)

    @classmethod
    def from_settings(
        cls, manifests: ManifestSet, settings: Settings, *, extra_endpoints: Sequence[EndpointMeta] = ()
    ) -> ManifestPoolSource:
        """The pool the ``pool`` setting names (needed when the manifests hold several)."""
        return cls(manifests, settings.pool, extra_endpoints=extra_endpoints)

    def describe(self) -> str:
        return self.pool.name

    def attach(self, datastore: Datastore) -> None:
        apply_manifests(datastore, self._manifests, self.pool)
        for meta in self._extra:
            datastore.upsert_endpoint(meta)

    async def open(self) -> None:
        return None

    async def run(self) -> None:
        """Nothing to watch: the files were applied by :meth:`attach`; wait to be cancelled."""
        await asyncio.get_running_loop().create_future()

    async def wait_pool(self) -> PoolSpec:
        return self.pool

    def pool_known(self) -> bool:
        return True

    def ready(self, datastore: Datastore) -> bool:
        return bool(datastore.candidates())

    def listener(self) -> tuple[str, int]:
        return self._manifests.listener()

    def route_prefixes(self, pool: PoolSpec) -> Sequence[str]:
        return tuple(self._manifests.route_prefixes(pool.name))

    def default_picker(self) -> EndpointPickerConfig:
        m = self._manifests
        return default_picker_config(lora=_uses_lora(m), base_models=_base_models(m))

    def base_models(self) -> list[str]:
        return _base_models(self._manifests)

    def objective_max_tokens(self) -> dict[str, int]:
        per_objective: dict[str, int] = {}
        for obj in self._manifests.objectives:
            raw = obj.metadata.annotations.get(MAX_TOKENS_ANNOTATION)
            if raw is None:
                continue
            try:
                value = int(raw.strip())
            except ValueError:
                value = 0
            if value < 1:
                raise ConfigError(
                    f"InferenceObjective/{obj.name}: metadata.annotations.{MAX_TOKENS_ANNOTATION}: "
                    f"must be a positive integer (got {raw!r})"
                )
            per_objective[obj.name] = value
        return per_objective

    def api_keys(self) -> Authenticator | None:
        return api_keys_from_manifests(self._manifests.files)

    async def close(self) -> None:
        return None


class KubernetesPoolSource:
    """``settings.pool`` in ``kubernetes.pool_namespace``, watched through the Kubernetes API (or,
    in standalone mode, the pods ``kubernetes.endpoint_selector`` selects there)."""

    manifests: ManifestSet | None = None

    def __init__(self, settings: Settings, *, api_client: Any | None = None) -> None:
        if settings.pool is None and settings.kubernetes.endpoint_selector is None:
            raise ConfigError("settings: pool: the InferencePool to watch is required (--pool-name)")
        self._settings = settings
        self.api_client: Any | None = api_client
        self._owns_client = api_client is None
        self.source: KubernetesSource | None = None
        self._datastore: Datastore | None = None
        self._changed = asyncio.Event()

    def describe(self) -> str:
        k = self._settings.kubernetes
        ns = self.source.namespace if self.source is not None else k.pool_namespace
        if k.endpoint_selector is not None:
            name = self.source.pool_name if self.source is not None else "?"
            return f"{ns or '?'}/{name} (pods {k.endpoint_selector!r}, no InferencePool)"
        return f"{ns or '?'}/{self._settings.pool}"

    def attach(self, datastore: Datastore) -> None:
        self._datastore = datastore
        datastore.add_listener(self._changed.set, in_flight=False)

    async def open(self) -> None:
        from infergate.sources.kubernetes_client import make_api_client

        if self.api_client is None:
            kubeconfig = self._settings.kubernetes.kubeconfig
            try:
                self.api_client = await make_api_client(kubeconfig=str(kubeconfig) if kubeconfig else None)
            except Exception as exc:  # the client raises its own ConfigException and OSErrors
                raise ConfigError(f"cannot build a Kubernetes client: {exc}") from exc
        assert self._datastore is not None, "attach() first"
        self.source = KubernetesSource.from_settings(
            self._settings, self._datastore, api_client=self.api_client
        )

    async def run(self) -> None:
        assert self.source is not None, "open() first"
        await self.source.run()

    async def wait_pool(self) -> PoolSpec:
        """Wait for the first sync, then for the pool (warning every 5 s while it is missing)."""
        import logging

        src = self.source
        assert src is not None, "open() first"
        await src.synced.wait()
        loop = asyncio.get_running_loop()
        warned_at: float | None = None
        while src.pool_spec is None:
            if warned_at is None or loop.time() - warned_at >= 5.0:
                logging.getLogger("infergate.epp").warning(
                    "InferencePool %s not found; waiting for it", self.describe()
                )
                warned_at = loop.time()
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 5.0)
        return src.pool_spec

    def pool_known(self) -> bool:
        src = self.source
        return src is not None and src.synced.is_set() and src.pool_spec is not None

    def ready(self, datastore: Datastore) -> bool:
        return self.pool_known()

    def listener(self) -> tuple[str, int]:
        return ("0.0.0.0", 0)  # a cluster picker serves gRPC only; Envoy runs elsewhere

    def route_prefixes(self, pool: PoolSpec) -> Sequence[str]:
        return ("/",)

    def default_picker(self) -> EndpointPickerConfig:
        # Which servers the pool fronts is unknown here; LoRA affinity is harmless without adapters.
        return default_picker_config(lora=True)

    def base_models(self) -> list[str]:
        return []

    def objective_max_tokens(self) -> dict[str, int]:
        return {}

    def api_keys(self) -> Authenticator | None:
        return None

    async def close(self) -> None:
        if self._owns_client and self.api_client is not None:
            with contextlib.suppress(Exception):
                await self.api_client.close()


def _uses_lora(manifests: ManifestSet) -> bool:
    if manifests.lora_configs:
        return True
    if not manifests.deployments:
        return True  # unknown servers: affinity is harmless when no adapter is requested
    return any("--enable-lora" in d.vllm_argv() for d in manifests.deployments)


def _base_models(manifests: ManifestSet) -> list[str]:
    """Names the model servers serve as base models (``--model``, ``--served-model-name``), so LoRA
    affinity stays neutral for requests that need no adapter."""
    names: list[str] = []
    for d in manifests.deployments:
        argv = d.vllm_argv()
        for i, arg in enumerate(argv):
            flag, eq, value = arg.partition("=")
            if flag == "--model":
                names.append(value if eq else (argv[i + 1] if i + 1 < len(argv) else ""))
            elif flag == "--served-model-name":
                if eq:
                    names.append(value)
                else:  # nargs="+": every value up to the next flag
                    for v in argv[i + 1 :]:
                        if v.startswith("-"):
                            break
                        names.append(v)
    return [n for n in dict.fromkeys(names) if n]
