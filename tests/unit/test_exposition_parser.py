"""The scraper's sample-line parser yields what prometheus_client's parser yields, line by line."""

from __future__ import annotations

import math

from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from infergate.sources.exposition_parser import parse_sample_line, parse_sample_lines


def reference(line: str) -> Sample | None:
    """prometheus_client's reading of a sample line on its own (None where it raises)."""
    try:
        samples = [s for fam in text_string_to_metric_families(line + "\n") for s in fam.samples]
    except Exception:  # it raises IndexError on some malformed label blocks
        return None
    return samples[0] if len(samples) == 1 else None


def same(a: Sample | None, b: Sample | None) -> bool:
    """Equal samples; values compared by repr, so NaN equals NaN and 1 differs from 1.0."""
    if a is None or b is None:
        return a is b
    return (a.name, a.labels, repr(a.value), repr(a.timestamp)) == (
        b.name,
        b.labels,
        repr(b.value),
        repr(b.timestamp),
    )


def test_vllm_lines() -> None:
    lines = [
        'vllm:num_requests_waiting{engine="0",model_name="m"} 2.0',
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="a,b",waiting_lora_adapters=""} 1.79e+09',
        "vllm:request_success_total 3",
        'vllm:kv_cache_usage_perc{engine="0"} NaN 1700000000000',
    ]
    got = parse_sample_lines(lines)
    assert [s.name for s in got] == [
        "vllm:num_requests_waiting",
        "vllm:lora_requests_info",
        "vllm:request_success_total",
        "vllm:kv_cache_usage_perc",
    ]
    assert got[0].labels == {"engine": "0", "model_name": "m"} and got[0].value == 2.0
    assert got[1].labels["running_lora_adapters"] == "a,b" and got[1].labels["waiting_lora_adapters"] == ""
    assert got[2].value == 3 and isinstance(got[2].value, int)
    assert math.isnan(got[3].value) and got[3].timestamp == 1_700_000_000.0
    for line in lines:
        assert same(parse_sample_line(line), reference(line))


def test_escapes_and_malformed_lines() -> None:
    line = r'm{a="x\"}y\\z\n",b="\t"} 1'
    sample = parse_sample_line(line)
    assert sample is not None and sample.labels == {"a": 'x"}y\\z\n', "b": "\\t"}
    assert same(sample, reference(line))
    bad = ['m{a="x} 1', "m 1_000", 'm{a="1",a="2"} 1', 'm{__x="1"} 1', "m", 'm{a="1"}', "{} 1"]
    for line in bad:
        assert parse_sample_line(line) is None, line
        assert reference(line) is None, line
    assert [s.name for s in parse_sample_lines(["m 1", "m{", "n 2"])] == ["m", "n"]


# Mostly valid pieces (so the fast path is exercised), with every kind of invalid one among them.
_names = st.sampled_from(
    ["m", "vllm:num_requests_waiting", "_x1", "a:b_c"] * 5 + ["9m", "m-x", "", "m{", '"m"']
)
_keys = st.sampled_from(["a", "b", "engine", "_"] * 6 + ["__name__", "__x", "9a", "a-b", "", '"a"'])
_text = st.one_of(st.text(alphabet="ab,ü", max_size=6), st.text(alphabet='ab "\\{},=n\tü#', max_size=8))
_values = st.sampled_from(
    ["1", "2.0", "-0", "1e3", "NaN", "+Inf", "-Inf", "1.79e+09"] * 3
    + ["inf", "1_0", "0x10", "abc", "", "٣", "#"]
)
_spaces = st.sampled_from(["", " ", "  ", "\t"] * 4 + [" \t ", "\x0b"])


@st.composite
def sample_lines(draw: st.DrawFn) -> str:
    name = draw(_names)
    block = ""
    if draw(st.booleans()):
        pairs = []
        for _ in range(draw(st.integers(0, 3))):
            value = draw(_text)
            quoted = f'"{value}"' if draw(st.integers(0, 9)) else value
            pairs.append(f"{draw(_keys)}{draw(_spaces)}={draw(_spaces)}{quoted}")
        block = (
            "{"
            + draw(st.sampled_from([",", ", ", " ,"])).join(pairs)
            + draw(st.sampled_from(["", ","]))
            + "}"
        )
        block = draw(_spaces) + block
    parts = [name + block]
    for _ in range(draw(st.integers(0, 3))):
        parts.append(draw(_values))
    line = draw(_spaces).join(parts) if len(parts) > 1 else parts[0]
    if len(parts) > 1 and not block:
        line = parts[0] + draw(st.sampled_from([" ", "\t", " \t"])) + draw(_spaces).join(parts[1:])
    return draw(_spaces) + line + draw(_spaces)


@settings(max_examples=1500, deadline=None)
@given(sample_lines())
@example('m{a="b"}1')
@example("m {a=}1")  # prometheus_client skips the empty label term: m 1
@example('m {a="b" , } 1 2')
@example('m 1 # {a="b"} 2')
def test_equal_to_prometheus_client(line: str) -> None:
    assert same(parse_sample_line(line), reference(line)), line


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40))
def test_any_text(line: str) -> None:
    if "\n" in line or "\r" in line:
        return  # one line at a time: the caller splits on newlines
    assert same(parse_sample_line(line), reference(line)), repr(line)
