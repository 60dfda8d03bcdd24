"""The settings model: layers and their precedence, provenance, and that every setting does something.

``test_every_setting_reaches_a_component`` builds the gateway's components through their
``from_settings`` (as ``infergate serve``/``up``/``epp`` do) with one setting changed at a time and
checks the value the component ended up with. A field added to ``Settings`` without a probe here
fails the test, and so does a field whose change no component sees.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from infergate.api.loader import load_manifests
from infergate.app.gateway import Gateway, ManifestPoolSource
from infergate.app.logs import configure_logging
from infergate.config.layers import field_paths, load_settings
from infergate.config.settings import Settings
from infergate.dataplanes.builtin import BuiltinDataPlane
from infergate.dataplanes.extproc import EnvoyDataPlane, ExtProcDataPlane
from infergate.dataplanes.extproc.server import ExtProcServer
from infergate.datastore.store import Datastore
from infergate.errors import ConfigError
from infergate.servers.tls import self_signed_pair
from infergate.sources.kubernetes import KubernetesSource
from tests.support import static_pool_docs

Probe = Callable[[Settings], object]


@pytest.fixture(scope="module")
def manifests_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("settings")
    docs = static_pool_docs(["127.0.0.1:1", "127.0.0.1:2"], objectives={"chat": 1})
    (root / "pool.yaml").write_text(yaml.safe_dump_all(docs))
    (root / "keys.yaml").write_text("sk-one: ['*']\n")
    (root / "tokens").write_text("t0k3n\n")
    cert, key = self_signed_pair("metrics")
    (root / "certs").mkdir()
    (root / "certs" / "tls.crt").write_bytes(cert)
    (root / "certs" / "tls.key").write_bytes(key)
    return root


def _gateway(root: Path, settings: Settings) -> Gateway:
    gw = Gateway(ManifestPoolSource.from_settings(load_manifests([root / "pool.yaml"]), settings), settings)
    gw.flow.close()
    return gw


def _outcome(fn: Callable[[], object]) -> object:
    """The value, or the error text: a setting may act by refusing a configuration."""
    try:
        return fn()
    except ConfigError as exc:
        return f"error: {exc}"


def _probes(root: Path) -> dict[str, tuple[Any, Probe]]:
    """Per setting: a non-default value and what a component built from the settings shows."""

    def gw(fn: Callable[[Gateway], object], **base: Any) -> Probe:
        def probe(s: Settings) -> object:
            return _outcome(lambda: fn(_gateway(root, s.replace(base) if base else s)))

        return probe

    def proxy(attr: str) -> Probe:
        def read(g: Gateway) -> object:
            assert isinstance(g.data_plane, BuiltinDataPlane)
            return getattr(g.data_plane.proxy._opts, attr)

        return gw(read)

    def epp(fn: Callable[[ExtProcServer], object]) -> Probe:
        def read(g: Gateway) -> object:
            assert isinstance(g.data_plane, ExtProcDataPlane) and g.data_plane.picker is not None
            return fn(g.data_plane.picker)

        return gw(read, data_plane="epp")

    def envoy(fn: Callable[[EnvoyDataPlane], object]) -> Probe:
        def read(g: Gateway) -> object:
            assert isinstance(g.data_plane, EnvoyDataPlane)
            return fn(g.data_plane)

        return gw(read, data_plane="envoy")

    def source(fn: Callable[[KubernetesSource], object]) -> Probe:
        def probe(s: Settings) -> object:
            src = KubernetesSource.from_settings(
                s.replace({"pool": "pool"}), Datastore.from_settings(s), api_client=object()
            )
            return fn(src)

        return probe

    def standalone(fn: Callable[[KubernetesSource], object]) -> Probe:
        """Standalone mode's settings, read with a selector and ports filled in where unset."""

        def probe(s: Settings) -> object:
            k = s.kubernetes
            s = s.replace(
                {
                    "kubernetes.endpoint_selector": k.endpoint_selector or "app=vllm",
                    "kubernetes.endpoint_target_ports": k.endpoint_target_ports or (8000,),
                }
            )
            return fn(KubernetesSource.from_settings(s, Datastore.from_settings(s), api_client=object()))

        return probe

    def seeded(s: Settings) -> object:
        """Two gateways from the same settings make the same random choices only with a seed."""
        a, b = _gateway(root, s), _gateway(root, s)
        return a.director.core._rng.random() == b.director.core._rng.random()

    def log_setup(attr: Callable[[logging.Logger], object]) -> Probe:
        def probe(s: Settings) -> object:
            root_logger = logging.getLogger()
            saved = (root_logger.level, list(root_logger.handlers))
            try:
                configure_logging(s)
                return attr(root_logger)
            finally:
                root_logger.handlers[:] = saved[1]
                root_logger.setLevel(saved[0])

        return probe

    flow = lambda fn: gw(lambda g: fn(g.flow._core))  # noqa: E731
    scraper = lambda fn: gw(lambda g: fn(g.scraper))  # noqa: E731
    limits = lambda fn: gw(lambda g: fn(g.director.limits))  # noqa: E731
    return {
        "data_plane": ("epp", gw(lambda g: type(g.data_plane).__name__)),
        "pool": ("other", gw(lambda g: g.pool.name)),
        "subset_filter": (False, gw(lambda g: g.director._honor_subset, data_plane="epp")),
        "seed": (7, seeded),
        "listeners.host": ("127.0.0.2", gw(lambda g: (g.listen_address()[0], g.admin_address[0]))),
        "listeners.port": (8123, gw(lambda g: g.listen_address()[1])),
        "listeners.admin_port": (9191, gw(lambda g: g.admin_address[1])),
        "listeners.grpc_port": (9102, epp(lambda p: p.port)),
        "listeners.grpc_health_port": (9103, gw(lambda g: g.data_plane.health.port, data_plane="epp")),  # type: ignore[attr-defined]
        "listeners.secure_serving": (False, epp(lambda p: p.tls is not None)),
        "listeners.cert_path": (root, epp(lambda p: p.tls.cert_path if p.tls else None)),
        "listeners.cert_reload": (True, epp(lambda p: p.tls.reload if p.tls else None)),
        "emit_endpoint_scores": (True, epp(lambda p: p.processor._emit_scores)),
        "listeners.tls_min_version": ("VersionTLS13", epp(lambda p: p.tls.min_version if p.tls else None)),
        "listeners.tls_cipher_suites": (
            ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",),
            epp(lambda p: p.tls.cipher_suites if p.tls else None),
        ),
        "listeners.grpc_max_recv_msg_size": (1 << 20, epp(lambda p: p.max_recv_bytes)),
        "listeners.grpc_max_send_msg_size": (1 << 20, epp(lambda p: p.max_send_bytes)),
        "listeners.grpc_stream_metrics": (True, epp(lambda p: p.stream_observer is not None)),
        "listeners.envoy_picker_port": (9104, envoy(lambda p: p.picker.port if p.picker else None)),
        "listeners.envoy_admin_port": (
            9105,
            envoy(lambda p: p.bootstrap_settings("127.0.0.1", 1).admin_port),
        ),
        "listeners.max_client_connections": (17, proxy("max_client_connections")),
        "listeners.admin_max_connections": (3, gw(lambda g: g.admin._max_connections)),
        "listeners.idle_timeout": (7.0, proxy("keepalive_timeout")),
        "proxy.retries": (4, gw(lambda g: g.director._max_attempts)),
        "proxy.connect_timeout": (1.5, proxy("connect_timeout")),
        "proxy.request_timeout": (30.0, proxy("read_timeout")),
        "proxy.first_byte_timeout": (20.0, proxy("read_timeout")),
        "proxy.stream_idle_timeout": (9.0, proxy("stream_idle_timeout")),
        "proxy.evicted_idle_timeout": (2.5, proxy("evicted_idle_timeout")),
        "proxy.evicted_idle_factor": (8.0, proxy("evicted_idle_factor")),
        "proxy.max_connections_per_endpoint": (
            8,
            gw(
                lambda g: (
                    g.proxy._opts.max_connections_per_endpoint,
                    g.flow._core._detector.connection_limit,
                )
            ),
        ),
        "proxy.served_header": (True, proxy("served_header")),
        "proxy.shutdown_grace": (3.0, proxy("shutdown_grace")),
        "proxy.workers": (
            3,
            gw(lambda g: type(g.data_plane).__name__ + str(getattr(g.data_plane, "_count", 1))),
        ),
        "scrape.interval": ("10ms", scraper(lambda sc: sc._interval)),
        "scrape.timeout": (0.3, scraper(lambda sc: sc._timeout)),
        "scrape.backoff_max": (4.0, scraper(lambda sc: sc._max_backoff)),
        "scrape.staleness": (9.0, gw(lambda g: g.datastore._staleness)),
        "scrape.health_interval": (0.5, scraper(lambda sc: sc._health_interval)),
        "scrape.health_timeout": (0.25, scraper(lambda sc: sc._health_timeout)),
        "scrape.evict_after_failed_probes": (5, scraper(lambda sc: sc._evict_after)),
        "scrape.pool_metrics_interval": (2.0, scraper(lambda sc: sc._pool_metrics_interval)),
        "flow_control.enabled": (False, flow(lambda c: c._config.enabled)),
        "flow_control.headroom": (0.0, flow(lambda c: c._config.headroom)),
        "flow_control.usage_limit": ("soft-reflective-ceiling", flow(lambda c: type(c._limit).__name__)),
        "flow_control.usage_limit_ceiling": (0.8, flow(lambda c: getattr(c._limit, "threshold", None))),
        "flow_control.usage_limit_min_ceiling": (0.3, flow(lambda c: getattr(c._limit, "min_ceiling", None))),
        "flow_control.usage_limit_domain": ("value", flow(lambda c: getattr(c._limit, "domain", None))),
        # the levels a ranked policy spreads its ceilings over, before any request of theirs
        "flow_control.priority_bands": ((10, 0), flow(lambda c: c._levels.levels(5, 0.0, ()))),
        "flow_control.ordering": ("slo-deadline", flow(lambda c: c._queues.ordering)),
        "flow_control.fairness": ("global-strict", flow(lambda c: c._queues.fairness)),
        "flow_control.detector": ("concurrency", flow(lambda c: type(c._detector).__name__)),
        "flow_control.concurrency_mode": ("hybrid", flow(lambda c: getattr(c._detector, "mode", None))),
        "flow_control.max_concurrency": (8, flow(lambda c: getattr(c._detector, "max_concurrency", None))),
        "flow_control.max_token_concurrency": (
            4096,
            flow(lambda c: getattr(c._detector, "max_token_concurrency", None)),
        ),
        "flow_control.program_service_weight": (0.5, flow(lambda c: c._config.program_aware.service_weight)),
        "flow_control.program_wait_weight": (0.5, flow(lambda c: c._config.program_aware.wait_weight)),
        "flow_control.program_half_life": (0.0, flow(lambda c: c._config.program_aware.half_life)),
        "flow_control.program_idle_ttl": (60.0, flow(lambda c: c._config.program_aware.idle_ttl)),
        "flow_control.program_sweep_interval": (5.0, flow(lambda c: c._config.program_aware.sweep_interval)),
        "flow_control.request_ttl": (1.0, flow(lambda c: c._config.default_ttl)),
        "flow_control.no_endpoint_request_ttl": (600.0, flow(lambda c: c._config.empty_pool_ttl)),
        "flow_control.max_queued_requests": (10, flow(lambda c: c._config.band_max_requests)),
        "flow_control.max_queued_bytes": (1024, flow(lambda c: c._config.band_max_bytes)),
        "flow_control.max_queued_requests_total": (20, flow(lambda c: c._config.max_requests)),
        "flow_control.max_queued_bytes_total": (4096, flow(lambda c: c._config.max_bytes)),
        "flow_control.queue_threshold": (2, flow(lambda c: c._detector.queue_threshold)),
        "flow_control.kv_threshold": (0.5, flow(lambda c: c._detector.kv_threshold)),
        "flow_control.saturation_staleness": (1.0, flow(lambda c: c._detector.staleness)),
        "flow_control.frontend_wait": (1.0, flow(lambda c: c._detector.frontend_wait)),
        "flow_control.tpot_slo": (0.08, flow(lambda c: c.guard and c.guard.tpot_slo)),
        "flow_control.ttft_slo": (2.0, flow(lambda c: c.guard and c.guard.ttft_slo)),
        "flow_control.tpot_hold": (0.0, flow(lambda c: c.guard and c.guard.hold)),
        "limits.max_body_bytes": (1000, proxy("max_body_bytes")),
        "limits.max_header_bytes": (2000, proxy("max_header_bytes")),
        "limits.max_messages": (3, limits(lambda lim: lim.max_messages)),
        "limits.max_tokens_ceiling": (64, limits(lambda lim: lim.ceiling_for("other"))),
        "limits.objective_max_tokens": ({"chat": 9}, limits(lambda lim: lim.ceiling_for("chat"))),
        "limits.max_n": (4, limits(lambda lim: lim.max_n)),
        "limits.vocab_size": (1000, limits(lambda lim: lim.vocab_size)),
        "limits.max_model_len": (512, limits(lambda lim: lim.max_model_len)),
        "auth.api_keys": (root / "keys.yaml", gw(lambda g: g.director.auth_enabled)),
        "auth.control_headers": ("trusted", gw(lambda g: g.director._control_headers)),
        "auth.metrics_auth": ("token", gw(lambda g: (len(g.admin.app.middlewares), g.metrics_token is None))),
        "auth.metrics_cert_dir": (
            root / "certs",
            gw(lambda g: g.admin.tls is not None, **{"auth.metrics_auth": "token"}),
        ),
        "auth.metrics_client_ca_file": (
            root / "certs" / "tls.crt",  # any PEM certificate is a CA bundle
            gw(
                lambda g: g.admin.tls.verify_mode if g.admin.tls else None,
                **{"auth.metrics_cert_dir": root / "certs", "auth.metrics_auth": "token"},
            ),
        ),
        "auth.metrics_token_file": (
            root / "tokens",
            gw(lambda g: g.metrics_token is None, **{"auth.metrics_auth": "token"}),
        ),
        "logging.level": ("error", log_setup(lambda lg: lg.level)),
        "logging.format": ("json", log_setup(lambda lg: type(lg.handlers[-1].formatter).__name__)),
        "kubernetes.pool_namespace": ("team-a", source(lambda src: src.namespace)),
        "kubernetes.kubeconfig": (root / "kubeconfig", source(lambda src: src._kubeconfig)),
        "kubernetes.write_status": (False, source(lambda src: src._write_status)),
        "kubernetes.endpoint_selector": (
            "app=qwen",
            standalone(lambda src: src._selector.text if src._selector is not None else None),
        ),
        "kubernetes.endpoint_target_ports": (
            (8001, 8002),
            standalone(lambda src: src._standalone.target_ports if src._standalone is not None else None),
        ),
    }


@pytest.fixture(scope="module")
def probes(manifests_dir: Path) -> dict[str, tuple[Any, Probe]]:
    return _probes(manifests_dir)


def test_every_setting_has_a_probe(probes: dict[str, tuple[Any, Probe]]) -> None:
    assert sorted(probes) == sorted(field_paths())


_HOLDBACK = {"flow_control.usage_limit": "priority-holdback", "flow_control.usage_limit_min_ceiling": 0.5}
#: Settings a probe needs on both sides: the fields only the policy they name reads (any other
#: policy refuses them).
_PROGRAMS = {"flow_control.fairness": "program-aware"}
_CONCURRENCY = {"flow_control.detector": "concurrency"}
_COMPANIONS: dict[str, dict[str, Any]] = {
    **{f"flow_control.program_{k}": _PROGRAMS for k in ("service_weight", "wait_weight", "half_life")},
    **{f"flow_control.program_{k}": _PROGRAMS for k in ("idle_ttl", "sweep_interval")},
    **{
        f"flow_control.{k}": _CONCURRENCY
        for k in ("concurrency_mode", "max_concurrency", "max_token_concurrency")
    },
    "flow_control.usage_limit_ceiling": {"flow_control.usage_limit": "static"},
    "flow_control.usage_limit_min_ceiling": _HOLDBACK,
    "flow_control.usage_limit_domain": _HOLDBACK,
    "flow_control.priority_bands": _HOLDBACK,
}


@pytest.mark.parametrize("path", field_paths())
def test_every_setting_reaches_a_component(path: str, probes: dict[str, tuple[Any, Probe]]) -> None:
    value, probe = probes[path]
    base = _COMPANIONS.get(path)
    default = Settings().replace(base) if base else Settings()
    changed = default.replace({path: value})
    assert probe(changed) != probe(default), f"{path}: changing it to {value!r} changed nothing"


# ----------------------------------------------------------------------------- layers


@pytest.fixture
def settings_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "settings.yaml"
    path.write_text("scrape:\n  interval: 100ms\n  timeout: 3\nlimits:\n  max_messages: 5\n")
    yield path


def test_flags_beat_env_beat_file_beat_defaults(settings_file: Path) -> None:
    loaded = load_settings(
        file=settings_file,
        environ={"INFERGATE_SCRAPE__TIMEOUT": "2", "INFERGATE_LIMITS__MAX_MESSAGES": "6"},
        flags={"limits.max_messages": 7, "proxy.retries": None},
        defaults={"listeners.host": "127.0.0.1"},
    )
    s = loaded.settings
    assert (s.scrape.interval, s.scrape.timeout, s.limits.max_messages) == (0.1, 2.0, 7)
    assert s.proxy.retries == 1  # a flag given as None was not given
    where = {path: source for path, _, source in loaded.describe()}
    assert where["scrape.interval"] == "file"
    assert where["scrape.timeout"] == "env"
    assert where["limits.max_messages"] == "flag"
    assert where["listeners.host"] == "default"
    assert where["proxy.retries"] == "default"


def test_env_reads_nested_values_and_json() -> None:
    s = load_settings(
        environ={
            "INFERGATE_DATA_PLANE": "envoy",
            "INFERGATE_FLOW_CONTROL__ENABLED": "false",
            "INFERGATE_LIMITS__OBJECTIVE_MAX_TOKENS": '{"chat": 5}',
        }
    ).settings
    assert s.data_plane == "envoy" and s.flow_control.enabled is False
    assert s.limits.objective_max_tokens == {"chat": 5}


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"environ": {"INFERGATE_SCRAPE__TIMOUT": "3"}}, r"INFERGATE_SCRAPE__TIMOUT: no such setting"),
        ({"flags": {"scrape.interval": "-1s"}}, r"scrape\.interval \(flag\): invalid duration"),
        ({"flags": {"scrape.interval": -1}}, r"scrape\.interval \(flag\): Input should be greater than 0"),
        ({"environ": {"INFERGATE_PROXY__RETRIES": "x"}}, r"proxy\.retries \(env\)"),
        ({"flags": {"data_plane": "nginx"}}, r"data_plane \(flag\)"),
    ],
)
def test_bad_values_name_the_setting_and_the_layer(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load_settings(**kwargs)


def test_a_cross_field_refusal_names_the_layer_of_the_field_it_refuses(tmp_path: Path) -> None:
    """A group's check refuses one of its fields by name; the layer given is the one that set it."""
    path = tmp_path / "s.yaml"
    path.write_text("flow_control:\n  usage_limit_min_ceiling: 0.3\n")
    with pytest.raises(ConfigError, match=r"flow_control \(file\): usage_limit_min_ceiling: read only by"):
        load_settings(file=path, environ={})
    with pytest.raises(ConfigError, match=r"flow_control \(flag\): usage_limit_min_ceiling: read only by"):
        load_settings(flags={"flow_control.usage_limit_min_ceiling": 0.3}, environ={})


def test_a_typo_in_the_settings_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("scrape:\n  intervl: 1\n")
    with pytest.raises(ConfigError, match=r"scrape\.intervl \(file\): Extra inputs are not permitted"):
        load_settings(file=path, environ={})
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(file=tmp_path / "absent.yaml", environ={})


def test_settings_are_frozen_and_defaults_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERGATE_PROXY__RETRIES", "9")
    assert Settings().proxy.retries == 1  # only load_settings reads the environment
    assert load_settings().settings.proxy.retries == 9
