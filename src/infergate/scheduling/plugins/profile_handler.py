"""``header-profile-handler`` (llm-d-router v0.10): several scheduling profiles, one per request,
named by a request header.

With one profile that profile always runs. With several, the profile named by the header
(``EPP-Profile`` by default, matched exactly against ``schedulingProfiles[].name``) runs; a missing
or blank header runs ``defaultProfile`` (``decode``); a header naming no profile is a client error
(400, naming the header and the profiles), where upstream can only answer 429. ``single-profile-handler``
(the default) is the one-profile case and needs no object here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from pydantic import Field

from infergate.errors import BadRequestError
from infergate.scheduling.sdk.framework import Params
from infergate.types import InferenceRequest

__all__ = ["HeaderProfileHandler", "HeaderProfileParams"]

P = TypeVar("P")


class HeaderProfileParams(Params):
    header_name: str = Field(default="EPP-Profile", min_length=1)
    default_profile: str = Field(default="decode", min_length=1)


class HeaderProfileHandler:
    """Chooses the profile for a request; not a filter, scorer or picker (never inside a profile)."""

    def __init__(self, params: HeaderProfileParams | None = None) -> None:
        p = params or HeaderProfileParams()
        self.header = p.header_name.lower()
        self.default_profile = p.default_profile

    def choose(self, request: InferenceRequest, profiles: Mapping[str, P]) -> P:
        if len(profiles) == 1:
            return next(iter(profiles.values()))
        name = (request.headers.get(self.header) or "").strip()
        if not name:
            return profiles[self.default_profile]
        found = profiles.get(name)
        if found is None:
            raise BadRequestError(
                f"header {self.header}: no scheduling profile named {name!r} "
                f"(profiles: {', '.join(profiles)})",
                param=self.header,
            )
        return found
