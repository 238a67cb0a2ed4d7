"""A deployment as declared in a config file: who runs it, which cameras, for what.

The schema checks structure (keys, types, cross-references). It deliberately accepts
any controller type and purpose code: whether they are lawful is the engine's
question, and an unknown one is denied there (fail closed), not rejected here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from anpr.formats import REGIONS
from anpr.registry import SINK_TYPES


def _not_a_boolean(value: Any) -> Any:
    # YAML reads yes/no/on/off/true/false as booleans, and pydantic would take true for 1.
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")  # a ValueError: pydantic reports no TypeError
    return value


def region_codes(value: Any) -> list[str]:
    """`FR`, `[FR, DE]` or `["us-ca"]` as upper-case region codes of anpr.formats; ValueError if unknown."""
    codes = [value] if isinstance(value, str) else value
    if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
        raise ValueError("must be a region code or a list of them, e.g. FR or [FR, DE]")
    unknown = [c for c in codes if c.upper() not in REGIONS]
    if unknown:
        countries = ", ".join(r for r in REGIONS if "-" not in r)
        raise ValueError(f"unknown region {', '.join(unknown)}; known: {countries}, and US states as US-CA")
    return [c.upper() for c in codes]


Count = Annotated[int, BeforeValidator(_not_a_boolean)]
Number = Annotated[float, BeforeValidator(_not_a_boolean)]

# No rule keeps reads for a century; a longer request is a mistake (1e308 days, .inf), and
# its deletion deadline would not be a number.
MAX_RETENTION_DAYS = 36_525


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _user_names(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class Controller(_Strict):
    type: str = Field(min_length=1)  # a code of rules.CONTROLLER_TYPES
    name: str = Field(min_length=1)
    jurisdiction: str = "FR"
    # The data-protection officer(s): the users (database login, or operating-system account
    # for a SQLite file) who answer a data subject's access and erasure requests, and the
    # only ones who may (`anpr db subject-access`, `anpr db erase`). Also who a letter names.
    dpo: Annotated[list[Annotated[str, Field(min_length=1)]], BeforeValidator(_user_names)] = []
    contact: str = ""  # where a data subject writes (an address, a mail box), printed in the letter


# What the database's columns hold (storage/store.py): a longer camera id or purpose code
# would be refused by PostgreSQL at the first read, mid-run, and an MQTT topic has a bound too.
MAX_CAMERA_ID = 128
MAX_PURPOSE_CODE = 64


class Camera(_Strict):
    id: str = Field(min_length=1, max_length=MAX_CAMERA_ID)
    source: str | None = None  # video file, stream URL or image folder; `anpr run SOURCE` overrides it
    location: str = ""
    purposes: list[str] = Field(min_length=1)


# What people write while a reference is still to come: never a reference itself.
PLACEHOLDERS = frozenset(
    {
        "todo",
        "tbd",
        "tba",
        "fixme",
        "xxx",
        "n/a",
        "na",
        "none",
        "null",
        "nil",
        "-",
        "?",
        "...",
        "unknown",
        "pending",
        "placeholder",
        "to do",
        "to be defined",
        "a definir",
        "à définir",
        "en cours",
        "test",
        "example",
    }
)


def _real_reference(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if not text or text.lower().strip(" .:-_*?!") in PLACEHOLDERS or text.lower() in PLACEHOLDERS:
            raise ValueError(f"{value!r} is {'blank' if not text else 'a placeholder'}, not a reference")
        return text
    return value


Reference = Annotated[str, BeforeValidator(_real_reference)]


class Safeguards(_Strict):
    """The safeguards a deployment declares; a reference must be a real one (not blank, not "TODO")."""

    dpia_reference: Reference | None = None
    prefect_authorisation: Reference | None = None
    administrative_decision: Reference | None = None
    human_review: bool = False
    signage: bool = False
    cnil_prior_consultation: Reference | None = None
    designated_agents: list[Reference] = []

    @field_validator("designated_agents")
    @classmethod
    def _distinct_agents(cls, agents: list[str]) -> list[str]:
        if len(set(agents)) != len(agents):
            raise ValueError("an agent is named twice")
        return agents

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


def _sink_spec() -> Any:
    """One sink's config: the settings model of its `type`, as registered in SINK_TYPES."""
    models = tuple(entry.settings for entry in SINK_TYPES.entries())
    return Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007 (a tuple of types needs Union[])


if TYPE_CHECKING:
    from anpr.config.sinks import SinkSettings as SinkSpec
else:
    SinkSpec = _sink_spec()


class Deployment(_Strict):
    """Who runs the cameras, what each camera is for, and where each purpose's reads go."""

    name: str = ""
    description: str = ""
    controller: Controller
    cameras: list[Camera] = []
    purposes: dict[str, Purpose] = {}
    sinks: dict[str, SinkSpec] = {"store": {"type": "database"}}  # type: ignore[dict-item]  # validated
    # Where the plates come from: their serial layouts are preferred when reading, and a
    # read shorter than every one of them is rejected. Empty: every layout counts.
    region: Annotated[list[str], BeforeValidator(region_codes)] = []

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @model_validator(mode="after")
    def _whole(self) -> Deployment:
        if not self.cameras:
            raise ValueError("a deployment needs at least one camera under 'cameras'")
        if not self.purposes:
            raise ValueError("a deployment needs at least one entry under 'purposes'")
        for index, camera in enumerate(self.cameras):
            for code in camera.purposes:
                if code not in self.purposes:
                    raise ValueError(
                        f"cameras[{index}] ({camera.id}) feeds purpose '{code}', which is not declared under 'purposes'"
                    )
        for code, purpose in self.purposes.items():
            if len(code) > MAX_PURPOSE_CODE:
                raise ValueError(f"purpose code '{code[:20]}…' is longer than {MAX_PURPOSE_CODE} characters")
            for sink in purpose.sinks:
                if sink not in self.sinks:
                    raise ValueError(f"purposes.{code} writes to sink '{sink}', which is not declared under 'sinks'")
        if len({c.id for c in self.cameras}) != len(self.cameras):
            raise ValueError("camera ids must be unique")
        return self

    def camera(self, camera_id: str) -> Camera | None:
        return next((c for c in self.cameras if c.id == camera_id), None)

    def fingerprint(self) -> str:
        """SHA-256 of what the policy sees (controller, cameras' purposes, purposes, sinks,
        region), not of names, descriptions or where a camera's frames come from: a
        database serves one fingerprint (policy/binding.py)."""
        data = self.model_dump(mode="json", exclude={"name", "description"})
        del data["controller"]["contact"]  # where to write, not what the policy does
        if not data["controller"]["dpo"]:  # added later: a deployment that names none keeps its fingerprint
            del data["controller"]["dpo"]
        data["cameras"] = [{"id": c["id"], "purposes": c["purposes"]} for c in data["cameras"]]
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


DEPLOYMENT_KEYS = tuple(Deployment.model_fields)  # at the top level of a config file
