"""``infergate pd-sidecar`` speaks the CLI style of every command: typer help, llm-d's flag
spellings (and their aliases), a bad value in one ``error:`` line with exit code 2."""

from __future__ import annotations

import pytest

from infergate.pdsidecar.cli import main


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--kv-connector", "lmcache"], "--kv-connector: 'lmcache': only nixlv2 is implemented"),
        (["--connector", "lmcache"], "only nixlv2 is implemented"),
        (["--vllm-port", "0"], "--model-server-port"),
        (["--prefill-timeout", "0"], "must be > 0"),
        (["--log-level", "loud"], "'loud' is not one of debug, info, warning, error"),
    ],
)
def test_bad_values_are_one_line_and_exit_2(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: infergate pd-sidecar: "), err
    assert says in err[0], err


def test_help_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--port", "--model-server-port", "--kv-connector", "--prefill-timeout"):
        assert flag in out
