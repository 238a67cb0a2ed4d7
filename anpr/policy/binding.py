"""One database, one deployment: a run or a query under another deployment is refused.

Without this, a hand-written config (a purpose renamed, an agent added) pointed at a
deployment's database would read that deployment's plates under rules it never had. The
first run binds the database to its deployment's fingerprint (Deployment.fingerprint);
every later run and query must present the same one, unless `anpr policy migrate` binds
the new one first. Binding and migrating are written to the audit log with who did it.
"""

from __future__ import annotations

import time

from sqlalchemy.orm import Session

from anpr.errors import PolicyRefusal
from anpr.policy.deployment import Deployment
from anpr.store import DeploymentBindingRow, ReadStore


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
