"""The data-plane map: a plane's facts come from its factory, not from comparing its name."""

from __future__ import annotations

import pytest

from infergate.app.run import _up_port_claims
from infergate.config.settings import DATA_PLANE_NAMES, Settings
from infergate.dataplanes import DATA_PLANES, data_plane_factory
from infergate.errors import ConfigError


def test_every_data_plane_setting_has_a_factory() -> None:
    assert set(DATA_PLANES) == set(DATA_PLANE_NAMES)
    with pytest.raises(ConfigError, match="data_plane: must be one of builtin, envoy, epp"):
        data_plane_factory("nginx")


@pytest.mark.parametrize(
    ("plane", "private"),
    [("builtin", set()), ("envoy", {(9102, "--grpc-port"), (9103, "--envoy-admin-port")})],
)
def test_up_checks_the_private_ports_its_data_plane_binds(plane: str, private: set[tuple[int, str]]) -> None:
    s = Settings().replace(
        {
            "data_plane": plane,
            "listeners.port": 8080,
            "listeners.envoy_picker_port": 9102,
            "listeners.envoy_admin_port": 9103,
        }
    )
    claims = {(c.host, c.port, c.flag) for c in _up_port_claims(s, [])}
    assert {
        (p, f) for h, p, f in claims if h == "127.0.0.1" and f not in ("--port", "--admin-port")
    } == private
