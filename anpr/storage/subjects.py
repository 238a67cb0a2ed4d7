"""A data subject's requests: "what do you hold about my plate?" (GDPR art. 15) and "erase
it" (art. 17), answered across every place a deployment keeps plates.

The places: the database (reads and passages, found by the plate's keyed hash, so a
purpose that keeps only the hash is searched too), the outage spool (store.spool_dir, and
the cluster nodes' spools beside it), and what each sink keeps on disk (export files,
webhook and MQTT queues: `SinkSettings.held_records` / `erase_records`). A plate is looked
for in every form the reader may have stored it under (`plates.stored_forms`).

Only the deployment's data-protection officers (`controller.dpo`) may ask: a request
answers for every purpose at once, which no designated agent of one purpose may see. On
PostgreSQL, once `anpr db init-roles` has made them, the database part goes through two
functions that check the login again and insert the request's audit entry themselves
(storage/roles.py: the `PREFIX_dpo` role, which may read no table of plates).
Every request, answered or refused, is written to the audit log under the authenticated
user; an answered one with a keyed hash of the plate of its own (`Keys.request_digest`),
never the plate nor the hash its records are stored under: the log is kept for good, and
after an erasure nothing in the database leads to the plate.

An erasure removes every record of the plate but those a rule keeps whatever the person
asks (`Retention.erasure_keeps_hits`: a LAPI hit, part of a procedure), and says which
were kept and why. Asked twice, it finds nothing the second time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from anpr.errors import ConfigError, PolicyRefusal
from anpr.policy.engine import Policy
from anpr.policy.rules import ERASURE_EXEMPTION, RULES, RULES_BY_ID
from anpr.reading.plates import normalise, stored_forms
from anpr.records import Passage, PolicedRead
from anpr.redact import printable
from anpr.storage.binding import require_binding
from anpr.storage.outbox import erase_subject_records, subject_records
from anpr.storage.spool import SPOOL, spool_folders
from anpr.storage.store import FunctionRefused

T = TypeVar("T")

DATABASE = "database"
# What a record holds besides its plate, by kind (no image is ever kept).
READ_FIELDS = (
    "time",
    "camera",
    "frame number",
    "position of the plate in the frame",
    "confidence of the detector and recogniser",
)
PASSAGE_FIELDS = ("first and last time", "camera", "number of reads", "confidence")
NO_IMAGE = "No image of the vehicle or the plate is kept anywhere."
# The rules under which an erasure request leaves a hit (Retention.erasure_keeps_hits).
KEEP_HITS = tuple(rule.id for rule in RULES if rule.retention.erasure_keeps_hits)
LIVE_TIMES = 1e9  # a read's time from here on is the wall clock of a stream (2001 on), below, a file's media time


@dataclass(frozen=True)
class HeldRecord:
    """One read or passage of the plate, where it is and what it holds."""

    where: str  # "database", "spool folder …", "export …", "webhook queue …", "MQTT queue …"
    kind: str  # "read" or "passage"
    time: float  # when it was read (a passage: its first read): Unix time, or media time in a file
    source: str  # the stream or file it was read from (credentials redacted)
    camera: str
    purpose: str
    rule: str
    legal_reference: str
    delete_after: float  # it goes by then, at the latest
    hit: bool  # the plate was in a flagged-vehicle file
    plate_in_clear: bool  # else only its keyed hash is held here
    fields: tuple[str, ...]
    kept_on_erasure: str | None = None  # why an erasure request leaves it (None: it would go)

    @property
    def when(self) -> str:
        """The moment as a person reads it: a date for a stream, a place in the file for a video."""
        if self.time >= LIVE_TIMES:
            return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.time))
        return f"{self.time:.1f} s into {self.source}"


@dataclass(frozen=True)
class SubjectAnswer:
    """Everything the deployment holds about one plate."""

    plate: str  # normalised, as asked
    forms: tuple[str, ...]  # every form looked for
    deployment: str
    controller: str
    dpo: tuple[str, ...]
    contact: str
    asked_by: str
    asked_at: float
    records: list[HeldRecord]
    nothing_kept: list[tuple[str, str]]  # (purpose, why it keeps nothing about a plate)
    places: list[str]  # every place searched

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "records": [asdict(r) for r in self.records]}


@dataclass(frozen=True)
class Erasure:
    """What an erasure request removed, where, and what it kept and why."""

    forms: tuple[str, ...]
    erased: dict[str, int] = field(default_factory=dict)  # place -> records removed
    kept: list[HeldRecord] = field(default_factory=list)
    still_held: list[str] = field(default_factory=list)  # what of the database's files anpr could not scrub, and why

    @property
    def total(self) -> int:
        return sum(self.erased.values())


def require_dpo(policy: Policy, audit, user: str, action: str) -> None:
    """PolicyRefusal (audited, with nothing of the plate) unless `user` is a data-protection
    officer of the deployment."""
    officers = policy.deployment.controller.dpo
    if user in officers:
        return
    reason = (
        f"user '{user}' is not the deployment's data-protection officer (controller.dpo), who alone answers it"
        if officers
        else "the deployment names no data-protection officer (controller.dpo): nobody may answer it"
    )
    audit.append(f"{action}.refused", user, {"reason": reason})
    raise PolicyRefusal(f"{action} refused: {reason}")


def subject_access(store, policy: Policy, audit, plate: str, user: str, spool_dir: str) -> SubjectAnswer:
    """Everything held about `plate`, for its data subject; audited. PolicyRefusal when
    `user` may not answer, StoreError when a place cannot be read (a run holding it)."""
    forms = _forms(policy, plate)
    require_dpo(policy, audit, user, "subject-access")
    require_binding(store, audit, policy.deployment, user, bind_if_new=False)
    request = _request(store, forms)
    files, places = _held_in_files(policy, forms, spool_dir)
    if store.has_subject_functions():
        reads, passages = _through_database(
            audit, "subject-access", user, request, lambda entry: store.subject_records_function(entry, forms)
        )
        database = [_from_database(row) for row in [*reads, *passages]]
    else:
        database = _held_in_database(store, forms)
        audit.append("subject-access", user, {**request, "records": len(database) + len(files)})
    deployment = policy.deployment
    return SubjectAnswer(
        forms[0],
        forms,
        deployment.name,
        deployment.controller.name,
        tuple(deployment.controller.dpo),
        deployment.controller.contact,
        user,
        time.time(),
        _in_order(database + files),
        _nothing_kept(policy),
        [f"{DATABASE} {store.safe_url}", *places],
    )


def erase(store, policy: Policy, audit, plate: str, user: str, spool_dir: str, reason: str | None = None) -> Erasure:
    """Remove every record of `plate` that no rule keeps, everywhere; audited."""
    forms = _forms(policy, plate)
    if reason is not None and any(form in normalise(reason) for form in forms):
        raise ConfigError("--reason must not name the plate: the audit log keeps the reason for good")
    reason = None if reason is None else printable(reason)
    require_dpo(policy, audit, user, "erase")
    require_binding(store, audit, policy.deployment, user, bind_if_new=False)
    request = {**_request(store, forms), "reason": reason}
    files, _ = _held_in_files(policy, forms, spool_dir)
    erasure = Erasure(forms, kept=[r for r in files if r.kept_on_erasure])
    if store.has_subject_functions():  # the database's function checks, deletes and audits at once, first
        deleted, reads, passages = _through_database(
            audit, "erase", user, request, lambda entry: store.subject_erase_function(entry, forms, reason)
        )
        erasure.kept[:0] = [_from_database(row) for row in [*reads, *passages]]  # what is left is what is kept
        _erase_database(store, deleted, erasure)
        _erase_files(policy, forms, spool_dir, erasure)
        return erasure
    # Files first, as before the database: a folder a run holds stops the request before any deletion.
    erasure.kept[:0] = [r for r in _held_in_database(store, forms) if r.kept_on_erasure]
    _erase_files(policy, forms, spool_dir, erasure)
    _erase_database(store, sum(store.erase_plate(form, KEEP_HITS) for form in forms), erasure)
    audit.append("erase", user, {**request, "deleted": erasure.total, "kept": len(erasure.kept)})
    return erasure


def _erase_database(store, deleted: int, erasure: Erasure) -> None:
    erasure.erased[DATABASE] = deleted
    if deleted:
        erasure.still_held.extend(store.scrub_after_erasure())


def _request(store, forms: tuple[str, ...]) -> dict[str, Any]:
    """What a request's audit entry says of it: its own keyed hash of the plate, never the plate."""
    return {"request_key": store.keys.request_digest(forms[0]), "forms": len(forms)}


def _through_database(audit, action: str, user: str, request: dict[str, Any], call: Callable[[Any], T]) -> T:
    """`call` of a database function (PostgreSQL, storage/roles.py), which checks the login
    and inserts the request's audit entry, made here with the key; its refusal audited and
    raised as PolicyRefusal."""
    try:
        return audit.append_through(call, action, user, request)
    except FunctionRefused as exc:
        reason = f"the database refused it: {exc}"
        audit.append(f"{action}.refused", user, {"reason": reason})
        raise PolicyRefusal(f"{action} refused: {reason}") from None


def _erase_files(policy: Policy, forms: tuple[str, ...], spool_dir: str, erasure: Erasure) -> None:
    """Remove the plate's records that no rule keeps from the spools and the sinks' files."""
    matches = _plate_matcher(forms)

    def goes(record: dict[str, Any]) -> bool:
        return matches(str(record.get("plate", ""))) and not _kept_on_erasure(record)

    for folder in spool_folders(spool_dir):
        erasure.erased[f"spool folder {folder}"] = erase_subject_records(SPOOL, folder, goes)
    for name, sink in policy.deployment.sinks.items():
        removed = sink.erase_records(name, goes)
        if removed is not None:
            erasure.erased[removed[1]] = removed[0]


def _forms(policy: Policy, plate: str) -> tuple[str, ...]:
    if not normalise(plate):
        raise ConfigError(f"not a plate: {printable(plate)!r} (no letter or digit)")
    return stored_forms(plate, policy.deployment.region)


def _plate_matcher(forms: tuple[str, ...]) -> Callable[[str], bool]:
    wanted = set(forms)
    return lambda text: text in wanted


def _held_in_database(store, forms: tuple[str, ...]) -> list[HeldRecord]:
    """The plate's reads and passages in the database, each once, read directly."""
    seen: set[str] = set()
    records: list[HeldRecord] = []
    for form in forms:
        for row in [*store.reads(plate=form), *store.passages(plate=form)]:
            if row.key not in seen:
                seen.add(row.key)
                records.append(_from_database(row))
    return records


def _held_in_files(policy: Policy, forms: tuple[str, ...], spool_dir: str) -> tuple[list[HeldRecord], list[str]]:
    """The plate's records in the spools and the sinks' files, and the places searched."""
    matches = _plate_matcher(forms)
    records: list[HeldRecord] = []
    places: list[str] = []
    for folder in spool_folders(spool_dir):
        places.append(f"spool folder {folder}")
        records += [_from_file(f"spool folder {folder}", r) for r in subject_records(SPOOL, folder, matches)]
    for name, sink in policy.deployment.sinks.items():
        found = sink.held_records(name, matches)
        if found is not None:
            places.append(found[0])
            records += [_from_file(found[0], r) for r in found[1]]
    return records, places


def _in_order(records: list[HeldRecord]) -> list[HeldRecord]:
    return sorted(records, key=lambda r: (r.time, r.where))


def _kept_on_erasure(record: dict[str, Any]) -> bool:
    """Whether an erasure request leaves this record (its dict form): a hit under KEEP_HITS."""
    return bool(record.get("hit")) and record.get("rule") in KEEP_HITS


def _record(where: str, data: dict[str, Any], in_clear: bool) -> HeldRecord:
    passage = "first_time" in data
    rule = RULES_BY_ID.get(str(data["rule"]))
    return HeldRecord(
        where,
        "passage" if passage else "read",
        float(data["first_time" if passage else "time"]),
        str(data.get("source", "")),
        str(data["camera"]),
        str(data["purpose"]),
        str(data["rule"]),
        rule.source if rule else "(a rule this version of anpr does not know)",
        float(data["delete_after"]),
        bool(data["hit"]),
        in_clear,
        PASSAGE_FIELDS if passage else READ_FIELDS,
        ERASURE_EXEMPTION if _kept_on_erasure(data) else None,
    )


def _from_database(row: PolicedRead | Passage) -> HeldRecord:
    data = row.to_dict()
    return _record(DATABASE, data, in_clear=not str(data["plate"]).startswith("#"))


def _from_file(where: str, data: dict[str, Any]) -> HeldRecord:
    return _record(where, data, in_clear=True)


def _nothing_kept(policy: Policy) -> list[tuple[str, str]]:
    """The deployment's purposes that keep nothing about a plate, and why."""
    out = []
    for purpose, decision in policy.decisions.items():
        if not decision.allowed:
            why = (
                f"denied by rule {decision.rule.id} ({decision.legal_reference}): nothing about any plate is "
                "kept for it, only hourly counts of the reads it was refused"
            )
        elif not decision.stores_reads:
            why = f"rule {decision.rule.id} keeps only hourly counts for it, nothing about any one plate"
        else:
            continue
        out.append((purpose, why))
    return out
