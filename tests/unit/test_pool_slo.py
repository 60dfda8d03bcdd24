"""One SLO per pool: the predicted-latency scorer and flow control's decode guard judge by the same
bounds, whichever of the routing configuration and the gateway settings names them."""

from __future__ import annotations

import argparse
import random

import pytest
from prometheus_client import CollectorRegistry

from infergate.app.core import PickerCore, build_core
from infergate.app.pool_slo import reconcile_slo
from infergate.bench.matrix import told_slo
from infergate.bench.stats import Slo, add_slo_arguments
from infergate.bench.steady import SteadyRunner, resolve_pool
from infergate.bench.twin_pool import settings_for_slo
from infergate.bench.workloads import load_workload
from infergate.config.layers import load_settings
from infergate.config.picker import EndpointPickerConfig, parse_picker_config
from infergate.config.settings import Settings
from infergate.datastore.store import Datastore
from infergate.errors import ConfigError
from infergate.scheduling.plugins.latency import PredictedLatencyScorer
from infergate.telemetry import GatewayMetrics
from infergate.types import PoolSpec


def _config(*params: str) -> EndpointPickerConfig:
    """A profile with one predicted-latency scorer per entry of ``params`` (its YAML parameters)."""
    lines = ["plugins:"]
    for i, p in enumerate(params):
        lines += ["- type: predicted-latency-scorer", f"  name: lat{i}", f"  parameters: {{{p}}}"]
    lines += ["- type: max-score-picker", "schedulingProfiles:", "- name: default", "  plugins:"]
    lines += [f"  - pluginRef: lat{i}" for i in range(len(params))]
    lines += ["  - pluginRef: max-score-picker"]
    return parse_picker_config("\n".join(lines) + "\n")


class _Clock:
    def now(self) -> float:
        return 0.0


def _core(picker: EndpointPickerConfig, settings: Settings) -> PickerCore:
    ds = Datastore(_Clock(), staleness=5.0)
    pool = PoolSpec(name="pool")
    ds.set_pool(pool)
    return build_core(
        ds,
        pool,
        picker=picker,
        settings=settings,
        metrics=GatewayMetrics(CollectorRegistry()),
        clock=_Clock(),
        rng=random.Random(0),
    )


def _scorer_slo(core: PickerCore, name: str = "lat0") -> tuple[float, float]:
    scorer = core.scheduler.plugin(name)
    assert isinstance(scorer, PredictedLatencyScorer)
    return scorer._p.ttft_slo_seconds, scorer._p.tpot_slo_seconds


def _guard_slo(core: PickerCore) -> tuple[float, float]:
    guard = core.flow.core.guard
    assert guard is not None
    return guard.ttft_slo, guard.tpot_slo


def test_the_scorers_bounds_become_the_decode_guards() -> None:
    core = _core(_config("ttftSloSeconds: 4, tpotSloSeconds: 0.2"), Settings())
    assert _scorer_slo(core) == (4.0, 0.2)
    assert _guard_slo(core) == (4.0, 0.2)


def test_bounds_set_only_in_the_settings_reach_the_scorer() -> None:
    settings = Settings().replace({"flow_control.tpot_slo": 0.1})
    core = _core(_config("ttftSloSeconds: 2"), settings)
    assert _scorer_slo(core) == (2.0, 0.1)
    assert _guard_slo(core) == (2.0, 0.1)


def test_one_bound_named_twice_with_two_values_is_refused_naming_both() -> None:
    settings = Settings().replace({"flow_control.tpot_slo": 0.1})
    with pytest.raises(ConfigError) as err:
        reconcile_slo(_config("tpotSloSeconds: 0.2"), settings)
    assert "plugins[lat0].parameters.tpotSloSeconds=0.2" in str(err.value)
    assert "flow_control.tpot_slo=0.1" in str(err.value)


def test_the_same_value_in_both_places_is_accepted() -> None:
    settings = Settings().replace({"flow_control.tpot_slo": 0.1})
    picker, s = reconcile_slo(_config("tpot_slo_seconds: 0.1"), settings)
    assert s.flow_control.tpot_slo == 0.1
    assert picker.plugins[0].parameters == {"tpot_slo_seconds": 0.1}  # snake_case counts as given


def test_two_scorers_of_one_pool_with_different_bounds_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"lat0.*ttftSloSeconds=2.*lat1.*ttftSloSeconds=3.*one SLO"):
        reconcile_slo(_config("ttftSloSeconds: 2", "ttftSloSeconds: 3"), Settings())


def test_a_scorer_that_names_no_bound_takes_the_one_another_scorer_names() -> None:
    core = _core(_config("ttftSloSeconds: 2", "onlineCorrection: true"), Settings())
    assert _scorer_slo(core, "lat1") == (2.0, 0.05)
    assert _guard_slo(core) == (2.0, 0.05)


def test_defaults_everywhere_change_nothing() -> None:
    picker, settings = _config("onlineCorrection: true"), Settings()
    assert reconcile_slo(picker, settings) == (picker, settings)
    assert reconcile_slo(_config(), settings)[1] is settings


def test_parameters_that_do_not_validate_are_left_for_the_scheduler_to_report() -> None:
    picker = _config("tpotSloSeconds: -1")
    settings = Settings().replace({"flow_control.tpot_slo": 0.1})
    assert reconcile_slo(picker, settings)[0] is picker
    with pytest.raises(ConfigError, match="lat0"):
        _core(picker, settings)


def test_the_bench_tells_the_gateway_its_slo() -> None:
    assert settings_for_slo(Slo()) is None  # default runs build nothing new
    told = settings_for_slo(Slo(ttft_s=4.0, tpot_s=0.2))
    assert told is not None and (told.flow_control.ttft_slo, told.flow_control.tpot_slo) == (4.0, 0.2)
    base = Settings().replace({"flow_control.tpot_hold": 0})
    kept = settings_for_slo(Slo(ttft_s=4.0, tpot_s=0.2), base)
    assert kept is not None and kept.flow_control.tpot_hold == 0 and kept.flow_control.tpot_slo == 0.2


def test_a_steady_runner_tells_the_gateway_unless_asked_not_to() -> None:
    spec = load_workload("sharegpt-like")
    slo = Slo(ttft_s=0.5, tpot_s=0.025)
    told = SteadyRunner(spec, resolve_pool(spec), slo=slo).config.settings
    assert told is not None and (told.flow_control.ttft_slo, told.flow_control.tpot_slo) == (0.5, 0.025)
    # an operator who never set the SLO: judged by one, the gateway keeps its defaults
    assert SteadyRunner(spec, resolve_pool(spec), slo=slo, tell_slo=False).config.settings is None


def test_the_twin_scripts_slo_options() -> None:
    parser = argparse.ArgumentParser()
    add_slo_arguments(parser)
    assert Slo.of_arguments(parser.parse_args([])) == (Slo(), True)
    loose = parser.parse_args(["--slo-ttft", "2", "--slo-tpot", "0.1", "--untold"])
    assert Slo.of_arguments(loose) == (Slo(ttft_s=2.0, tpot_s=0.1), False)


def test_a_matrix_gateway_is_told_the_slo_through_its_environment() -> None:
    env = told_slo({"PATH": "/bin"}, Slo(ttft_s=4.0, tpot_s=0.2))
    loaded = load_settings(environ=env).settings
    assert (loaded.flow_control.ttft_slo, loaded.flow_control.tpot_slo) == (4.0, 0.2)
    assert told_slo({"PATH": "/bin"}, None) == {"PATH": "/bin"}
