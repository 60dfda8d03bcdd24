"""Checks on a ``bench --url`` target before any load is sent.

A benchmark that runs for minutes against a target that is down, or that does not serve a model the
workload asks for, used to end with a report: "SLO met 85 %" with 10 % of 404s folded in, or exit
code 0 for a URL nothing listened on. These checks run first and say what is wrong in one line:
the target must answer, and must list every model the workload sends (else the error names them and
what the target does serve). Replicas named with ``--replica`` that cannot be read are a warning:
the run is still valid, only their counters are missing from the report.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import aiohttp

__all__ = ["TargetCheck", "TargetError", "check_target"]


class TargetError(Exception):
    """The target cannot be benchmarked as asked; ``exit_code`` is what the command exits with."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class TargetCheck:
    served: tuple[str, ...] | None
    """Model ids ``/v1/models`` lists; None when the target has no such route (not checked)."""
    warnings: tuple[str, ...] = ()
    readable_replicas: tuple[str, ...] = ()


async def _served_models(session: aiohttp.ClientSession, url: str) -> tuple[str, ...] | None:
    try:
        async with session.get(url + "/v1/models") as resp:
            if resp.status in (404, 405):
                return None
            if resp.status in (401, 403):
                raise TargetError(f"{url}/v1/models answered {resp.status}: the target needs an API key", 2)
            if resp.status != 200:
                raise TargetError(f"{url}/v1/models answered {resp.status}; is the target ready?", 1)
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise TargetError(f"cannot reach {url}: {exc or type(exc).__name__}", 1) from None
    except ValueError:
        raise TargetError(
            f"{url}/v1/models did not answer JSON; is this an OpenAI-compatible URL?", 2
        ) from None
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise TargetError(f"{url}/v1/models is not an OpenAI model list", 2)
    return tuple(str(e.get("id")) for e in entries if isinstance(e, dict) and e.get("id"))


async def _readable(session: aiohttp.ClientSession, replica: str) -> str | None:
    """None if ``replica``'s /metrics answers 200, else why not."""
    try:
        async with session.get(replica + "/metrics") as resp:
            await resp.read()
            return None if resp.status == 200 else f"/metrics answered {resp.status}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return str(exc) or type(exc).__name__


async def check_target(
    url: str,
    models: Iterable[str],
    replicas: Sequence[str],
    *,
    skip_unserved: bool = False,
    limit_s: float = 10.0,
) -> TargetCheck:
    """Raise :class:`TargetError` if ``url`` is down or does not serve one of ``models``.

    With ``skip_unserved`` a model the target does not serve is a warning instead; the caller
    leaves its requests out (:attr:`TargetCheck.served` says which remain).
    """
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=limit_s)) as session:
        served = await _served_models(session, url)
        problems = await asyncio.gather(*(_readable(session, r) for r in replicas))
    wanted = sorted(set(models))
    warnings = [
        f"--replica {r}: cannot read its /metrics ({why}); its counters are left out of the report"
        for r, why in zip(replicas, problems, strict=True)
        if why is not None
    ]
    if served is None:
        warnings.append(f"{url} has no /v1/models; not checked that it serves {', '.join(wanted)}")
    else:
        missing = [m for m in wanted if m not in served]
        if missing and skip_unserved:
            warnings.append(f"{url} does not serve {', '.join(missing)}: those requests are left out")
        elif missing:
            raise TargetError(
                f"{url} does not serve {', '.join(missing)}, which the workload asks for "
                f"(it serves: {', '.join(served) or 'nothing'}); choose a workload for this target "
                "or pass --skip-unserved to leave their requests out",
                2,
            )
    ok = tuple(r for r, why in zip(replicas, problems, strict=True) if why is None)
    return TargetCheck(served=served, warnings=tuple(warnings), readable_replicas=ok)
