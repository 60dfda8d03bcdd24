"""Several scheduling profiles with ``header-profile-handler``; one profile needs no handler."""

from __future__ import annotations

import pytest

from infergate.config.picker import parse_picker_config
from infergate.errors import BadRequestError, ConfigError
from infergate.scheduling.engine.scheduler import build_scheduler
from infergate.types import Endpoint, EndpointMeta, InferenceRequest

HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
TWO = (
    HEAD
    + """
plugins:
- {type: label-selector-filter, name: prefill-pods, parameters: {matchLabels: {llm-d.ai/role: prefill}}}
- {type: label-selector-filter, name: decode-pods, parameters: {matchLabels: {llm-d.ai/role: decode}}}
- {type: max-score-picker}
- {type: header-profile-handler, parameters: {headerName: X-Stage, defaultProfile: decode}}
schedulingProfiles:
- {name: prefill, plugins: [{pluginRef: prefill-pods}, {pluginRef: max-score-picker}]}
- {name: decode, plugins: [{pluginRef: decode-pods}, {pluginRef: max-score-picker}]}
"""
)
CANDS = [
    Endpoint(meta=EndpointMeta(name="p", address="10.0.0.1", port=8000, labels={"llm-d.ai/role": "prefill"})),
    Endpoint(meta=EndpointMeta(name="d", address="10.0.0.2", port=8000, labels={"llm-d.ai/role": "decode"})),
]


def req(**headers: str) -> InferenceRequest:
    return InferenceRequest(request_id="r", model="m", target_model="m", headers=headers)


def test_header_chooses_the_profile_default_when_absent() -> None:
    s = build_scheduler(parse_picker_config(TWO))
    assert set(s.profiles) == {"prefill", "decode"}
    assert s.schedule(req(**{"x-stage": "prefill"}), CANDS).primary.meta.name == "p"
    assert s.schedule(req(**{"x-stage": "decode"}), CANDS).primary.meta.name == "d"
    result = s.schedule(req(), CANDS)
    assert (result.primary.meta.name, result.profile) == ("d", "decode")
    with pytest.raises(BadRequestError, match="no scheduling profile named 'encode'"):
        s.schedule(req(**{"x-stage": "encode"}), CANDS)


def test_several_profiles_need_the_handler_and_a_valid_default() -> None:
    without = TWO.replace(
        "- {type: header-profile-handler, parameters: {headerName: X-Stage, defaultProfile: decode}}\n", ""
    )
    with pytest.raises(ConfigError, match="need a profile handler"):
        build_scheduler(parse_picker_config(without))
    bad_default = TWO.replace("defaultProfile: decode", "defaultProfile: encode")
    with pytest.raises(ConfigError, match="defaultProfile: no scheduling profile named 'encode'"):
        build_scheduler(parse_picker_config(bad_default))


def test_one_profile_runs_whatever_the_header_says() -> None:
    cfg = parse_picker_config(
        HEAD
        + "plugins: [{type: queue-scorer}, {type: header-profile-handler}, {type: single-profile-handler}]\n"
    )
    s = build_scheduler(cfg)
    assert s.schedule(req(**{"epp-profile": "anything"}), CANDS).profile == "default"
