"""A deployment as declared in a config file: who runs it, which cameras, for what.

The schema checks structure (keys, types, cross-references). It deliberately accepts
any controller type and purpose code: whether they are lawful is the engine's
question, and an unknown one is denied there (fail closed), not rejected here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


def _not_a_boolean(value: Any) -> Any:
    # YAML reads yes/no/on/off/true/false as booleans, and pydantic would take true for 1.
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")  # noqa: TRY004 (pydantic reports ValueError only)
    return value


Count = Annotated[int, BeforeValidator(_not_a_boolean)]
Number = Annotated[float, BeforeValidator(_not_a_boolean)]

# No rule keeps reads for a century; a longer request is a mistake (1e308 days, .inf), and
# its deletion deadline would not be a number.
MAX_RETENTION_DAYS = 36_525


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Controller(_Strict):
    type: str = Field(min_length=1)  # a code of rules.CONTROLLER_TYPES
    name: str = Field(min_length=1)
    jurisdiction: str = "FR"


class Camera(_Strict):
    id: str = Field(min_length=1)
    source: str | None = None  # video file, stream URL or image folder; `anpr run SOURCE` overrides it
    location: str = ""
    purposes: list[str] = Field(min_length=1)


class Safeguards(_Strict):
    dpia_reference: str | None = None
    prefect_authorisation: str | None = None
    administrative_decision: str | None = None
    human_review: bool = False
    signage: bool = False
    cnil_prior_consultation: str | None = None
    designated_agents: list[str] = []

    def present(self) -> frozenset[str]:
        """The names of the safeguards that are actually given."""
        return frozenset(name for name, value in self.model_dump().items() if value)


class Purpose(_Strict):
    legal_basis: str = ""
    safeguards: Safeguards = Safeguards()
    retention_days: Number | None = Field(None, gt=0, le=MAX_RETENTION_DAYS)
    sinks: list[str] = Field(min_length=1)  # names of `sinks` entries this purpose writes to
    hotlist: Path | None = None  # plates of flagged vehicles: a read of one is a hit (LAPI)
    compliant_plates: Path | None = None  # plates allowed in a low-emission zone (ZFE)


class Sink(_Strict):
    type: Literal["database", "jsonl_export", "webhook"]
    path: Path | None = None  # jsonl_export: the file appended to
    url: str | None = None  # webhook: where each batch is POSTed as JSON

    @model_validator(mode="after")
    def _target_given(self) -> Sink:
        if self.type == "jsonl_export" and self.path is None:
            raise ValueError("a jsonl_export sink needs 'path'")
        if self.type == "webhook" and not self.url:
            raise ValueError("a webhook sink needs 'url'")
        return self
