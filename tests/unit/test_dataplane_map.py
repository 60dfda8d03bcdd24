"""The data-plane map: a plane's facts come from its factory, not from comparing its name."""

from __future__ import annotations

import dataclasses

import pytest
from typer.testing import CliRunner

from infergate.app.run import _up_port_claims
from infergate.cli import app
from infergate.config.settings import DATA_PLANE_NAMES, Settings
from infergate.dataplanes import DATA_PLANES, check_runs_under_up, data_plane_factory
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


def test_the_map_says_which_planes_up_runs() -> None:
    assert {n: data_plane_factory(n).runs_under_up for n in DATA_PLANES} == {
        "builtin": True,
        "envoy": True,
        "epp": False,
    }
    check_runs_under_up("envoy")
    with pytest.raises(ConfigError, match=r"--data-plane must be builtin or envoy for `up` \(got epp\)"):
        check_runs_under_up("epp")


def test_a_new_plane_is_one_map_entry_for_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """`up` asks the factory, so a plane added to the map is accepted (or refused) without cli edits."""
    base = data_plane_factory("builtin")
    planes = dict(DATA_PLANES)
    planes["quic"] = lambda: dataclasses.replace(base, runs_under_up=True)
    planes["sidecar"] = lambda: dataclasses.replace(base, runs_under_up=False)
    monkeypatch.setattr("infergate.dataplanes.DATA_PLANES", planes)
    check_runs_under_up("quic")
    with pytest.raises(ConfigError, match="must be builtin or envoy or quic for `up` \\(got sidecar\\)"):
        check_runs_under_up("sidecar")


def test_up_refuses_the_epp_plane_before_starting_anything() -> None:
    result = CliRunner().invoke(app, ["up", "--data-plane", "epp"])
    assert result.exit_code == 2
    assert "--data-plane must be builtin or envoy for `up` (got epp)" in result.output
