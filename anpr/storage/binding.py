"""One database, one deployment: a run or a query under another deployment is refused.

Without this, a hand-written config (a purpose renamed, an agent added) pointed at a
deployment's database would read that deployment's plates under rules it never had. The
first run binds the database to its deployment's fingerprint (Deployment.fingerprint);
every later run and query must present the same one, unless `anpr policy migrate` binds
the new one first. Binding and migrating are written to the audit log with who did it.

One database, one key, too (`require_key`): its first run records the key's fingerprint
and an id of its own (anpr/storage/identity.py), and any other key is refused.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from anpr.config.deployment import Deployment
from anpr.errors import ConfigError, PolicyRefusal, StoreError, first_line
from anpr.storage.audit import AuditEntry, AuditLog
from anpr.storage.identity import IDENTITY_TABLE, ROW_ID, DatabaseIdentityRow, Identity, database_identity
from anpr.storage.store import DeploymentBindingRow, ReadStore, database_error


def require_binding(store: ReadStore, audit, deployment: Deployment, user: str, *, bind_if_new: bool) -> None:
    """Refuse (PolicyRefusal) a deployment the database is not bound to; a database never
    bound is bound to it when `bind_if_new` (a run), else refused too (a query of an
    empty database has nothing to find)."""
    bound = store.binding()
    fingerprint = deployment.fingerprint()
    if bound is None:
        if not bind_if_new:
            raise PolicyRefusal(f"database {store.safe_url} serves no deployment yet: nothing to query")
        _bind(store, audit, deployment, fingerprint, user, "deployment.bind", None)
        return
    if bound.fingerprint != fingerprint:
        raise PolicyRefusal(
            f"database {store.safe_url} serves deployment '{bound.name}' ({bound.fingerprint[:12]}), bound "
            f"{time.strftime('%Y-%m-%d', time.gmtime(bound.bound_at))} by {bound.bound_by}; this config is "
            f"{fingerprint[:12]}: a changed deployment must be bound first with `anpr policy migrate` (audited)"
        )


def migrate(store: ReadStore, audit, deployment: Deployment, user: str) -> tuple[str | None, str]:
    """Bind the database to `deployment` (audited); its old and new fingerprints."""
    bound = store.binding()
    old = bound.fingerprint if bound else None
    new = deployment.fingerprint()
    if old != new:
        _bind(store, audit, deployment, new, user, "deployment.migrate", old)
    return old, new


def _bind(
    store: ReadStore, audit, deployment: Deployment, fingerprint: str, user: str, action: str, old: str | None
) -> None:
    with Session(store.engine) as session, session.begin():
        session.add(
            DeploymentBindingRow(
                fingerprint=fingerprint, name=deployment.name or "(unnamed)", bound_at=time.time(), bound_by=user
            )
        )
        details = {"fingerprint": fingerprint, "name": deployment.name, "previous": old}
        audit.append(action, user, details, session=session)


def require_key(store: ReadStore, audit: AuditLog, key_file: str, *, bind_as: str | None) -> None:
    """Refuse (ConfigError) a key that is not the database's: its fingerprint is not the one
    the database was bound with, or, in a database not bound yet, it does not authenticate
    the audit log's newest entry (a database from before anpr/storage/identity.py). One not bound
    yet is bound to this key, audited, when `bind_as` names who runs (a run), else left
    as it is (a query: its login may not write)."""
    keys = store.keys
    with _failures(store, "cannot read the identity of database"), Session(store.engine) as session:
        bound = database_identity(session)
        newest = session.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).first()
    if bound is None:
        if newest is not None and not hmac.compare_digest(newest.computed_hash(keys), newest.entry_hash):
            raise ConfigError(
                f"key file {key_file} is not the key of database {store.safe_url}: it does not authenticate "
                f"the audit log's newest entry ({newest.seq}); give the key file the database was run with "
                f"(store.key_file), or see `anpr audit verify` if the log was changed"
            )
        if bind_as is None:
            return
        bound = _bind_key(store, audit, bind_as)
    if not hmac.compare_digest(bound.key_fingerprint, keys.fingerprint()):
        raise ConfigError(
            f"key file {key_file} is not the key of database {store.safe_url}: the database was first run "
            f"with key {bound.key_fingerprint[:12]} ({time.strftime('%Y-%m-%d', time.gmtime(bound.bound_at))}, "
            f"by {bound.bound_by}), this is key {keys.fingerprint()[:12]}; give the key file it was run with "
            f"(store.key_file): under another key its plates could not be found, nor deleted"
        )


def _bind_key(store: ReadStore, audit: AuditLog, user: str) -> Identity:
    """Record the key's fingerprint and a new database id; the identity bound first when
    another run did it at the same moment."""
    identity = Identity(secrets.token_hex(16), store.keys.fingerprint(), time.time(), user)
    try:
        with _failures(store, "cannot bind the key of database"):
            IDENTITY_TABLE.create(store.engine, checkfirst=True)
            with Session(store.engine) as session, session.begin():
                session.add(DatabaseIdentityRow(id=ROW_ID, **asdict(identity)))
                session.flush()  # a clash shows here, before the audit entry
                details = {"database_id": identity.database_id, "key_fingerprint": identity.key_fingerprint}
                audit.append("database.bind", user, details, session=session)
    except _Clash:
        with _failures(store, "cannot read the identity of database"):
            first = database_identity(store.engine)
        if first is None:
            raise StoreError(f"cannot bind the key of database {store.safe_url}: its identity row clashes") from None
        return first
    return identity


class _Clash(Exception):
    """Another run bound the database first."""


@contextmanager
def _failures(store: ReadStore, what: str) -> Iterator[None]:
    try:
        yield
    except IntegrityError:
        raise _Clash from None
    except SQLAlchemyError as exc:
        raise database_error(exc)(f"{what} {store.safe_url}: {first_line(exc)}") from None
