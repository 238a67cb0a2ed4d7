"""PostgreSQL roles of a deployment's database: `anpr db init-roles`, run by its owner.

Three group roles (NOLOGIN: the operator grants them to real logins), named after a
prefix (`anpr` by default; roles belong to the whole server, so two deployments'
databases on one server take two prefixes):

    <prefix>_writer   the pipeline (`anpr run`): inserts reads, passages and policy
                      counters, binds a database that serves no deployment yet, appends to
                      the audit log and deletes what retention deletes. Of a kept row it
                      may read only its id, key and deadline, never its plate, and row-level
                      security lets it insert, see and delete only the rows of a purpose
                      the deployment allows to keep reads: even a compromised pipeline
                      cannot store a denied purpose's reads.
    <prefix>_query    the designated agents (`anpr db search`): no privilege on reads or
                      passages at all. They read through one SECURITY DEFINER function,
                      SEARCH_FUNCTION, which checks that the login (session_user) is a
                      designated agent of the purpose, applies the hits-only rule of LAPI
                      purposes, never returns a row past its deadline, and inserts the
                      query's audit entry in the same transaction.
    <prefix>_auditor  `anpr audit verify`: reads the audit log, the deployment bindings and
                      the policy counters, nothing else.
    <prefix>_dpo      the data-protection officers (`anpr db subject-access`, `anpr db erase`):
                      no privilege on reads or passages either. Two SECURITY DEFINER
                      functions, SUBJECT_RECORDS_FUNCTION and SUBJECT_ERASE_FUNCTION, check
                      that the login is an officer (`controller.dpo`, in DPO_TABLE), return
                      (or delete, but the hits a rule keeps) every record of one plate's
                      keyed hashes, whatever its purpose, and insert the request's audit entry.

The database does not hold the audit key (keys.py), so the search function cannot make
an audit entry itself: the client, which has the key file, makes the next entry of the
log (audit.AuditLog.append_through) and passes it in. The function takes the log's lock,
refuses an entry that is not the next one (the client makes it again), or whose actor
is not the login, whose action is not 'query', or whose details are not this query's
(purpose, plate_key, procedure, passages); an entry with a forged MAC is found by
`anpr audit verify`. The subject functions take theirs the same way: the request (its own
keyed hash of the plate, how many forms were asked, an erasure's reason), not what was found.

Who is an agent of which purpose, and which purposes the writer may store, come from the
config given to init-roles: its allowed purposes that keep reads, with their
`safeguards.designated_agents`, in the tables PURPOSES_TABLE and AGENTS_TABLE, and the
officers in DPO_TABLE (with the deployment's fingerprint: after `anpr policy migrate`, the
functions refuse every request until init-roles has been run again with the new config). The owner is not affected by
row-level security, and the functions run as the owner.

What each role is granted is the data below (GRANTS, ROW_POLICIES); every run first
revokes all the roles hold on these tables, so running it again (after a config change
or an upgrade) leaves exactly these grants.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from anpr.errors import ConfigError, PolicyRefusal, StoreError, first_line
from anpr.policy.engine import Policy
from anpr.storage.audit import APPEND_LOCK, GENESIS, AuditLog
from anpr.storage.store import (
    SEARCH_FUNCTION,
    SUBJECT_ERASE_FUNCTION,
    SUBJECT_RECORDS_FUNCTION,
    ReadStore,
    database_error,
)
from anpr.storage.subjects import KEEP_HITS

PREFIX = re.compile(r"[a-z][a-z0-9_]{0,40}")
ROLES = {
    "writer": "the pipeline (anpr run): writes reads, passages and counters, never reads a plate",
    "query": "the designated agents (anpr db search): read only through the search function, audited",
    "auditor": "anpr audit verify: reads the audit log, the bindings and the counters",
    "dpo": "the data-protection officers (anpr db subject-access, anpr db erase): one plate's records "
    "only through the subject functions, audited",
}
PURPOSES_TABLE = "anpr_query_purposes"
AGENTS_TABLE = "anpr_query_agents"
DPO_TABLE = "anpr_dpo_logins"
KEPT_TABLES = ("reads", "passages")
# Everything the roles may touch: each run revokes all they hold on these first.
TABLES = (*KEPT_TABLES, "policy_counts", "written_batches", "deployment_bindings", "database_identity", "audit_log")
SEQUENCES = ("reads_id_seq", "passages_id_seq", "policy_counts_id_seq", "deployment_bindings_id_seq")
# Of a kept row, what the store's writes and purge read (ReadStore._already_written, purge).
KEPT_COLUMNS = "id, key, delete_after"
# The audit entry every function inserts (audit.AuditEntry's fields), after its own arguments.
ENTRY_ARGUMENTS = (
    ("p_seq", "bigint"),
    ("p_at", "double precision"),
    ("p_actor", "text"),
    ("p_action", "text"),
    ("p_details", "text"),
    ("p_prev_hash", "text"),
    ("p_entry_hash", "text"),
)


@dataclass(frozen=True)
class Function:
    """A SECURITY DEFINER function of the database: its name and arguments, in order
    (ReadStore._call names them)."""

    name: str
    arguments: tuple[tuple[str, str], ...]

    @property
    def signature(self) -> str:
        return f"{self.name}({', '.join(kind for _, kind in self.arguments)})"

    @property
    def declaration(self) -> str:
        return ", ".join(f"{name} {kind}" for name, kind in self.arguments)


SEARCH = Function(
    SEARCH_FUNCTION,
    (
        ("p_purpose", "text"),
        ("p_plate_key", "text"),
        ("p_procedure", "text"),
        ("p_passages", "boolean"),
        *ENTRY_ARGUMENTS,
    ),
)
SUBJECT_RECORDS = Function(SUBJECT_RECORDS_FUNCTION, (("p_plate_keys", "text[]"), *ENTRY_ARGUMENTS))
SUBJECT_ERASE = Function(SUBJECT_ERASE_FUNCTION, (("p_plate_keys", "text[]"), ("p_reason", "text"), *ENTRY_ARGUMENTS))
FUNCTIONS = (SEARCH, SUBJECT_RECORDS, SUBJECT_ERASE)


@dataclass(frozen=True)
class Grant:
    role: str  # a key of ROLES
    privileges: str
    on: str


GRANTS = (
    Grant("writer", f"INSERT, DELETE, SELECT ({KEPT_COLUMNS})", "TABLE reads, passages"),
    Grant("writer", "SELECT, INSERT, UPDATE", "TABLE policy_counts"),
    Grant("writer", "SELECT, INSERT, DELETE", "TABLE written_batches"),
    Grant("writer", "SELECT, INSERT", "TABLE deployment_bindings, audit_log"),
    # Its first run binds the database's key (anpr/storage/identity.py: one row, never updated).
    Grant("writer", "SELECT, INSERT", "TABLE database_identity"),
    Grant("writer", "USAGE", f"SEQUENCE {', '.join(SEQUENCES)}"),
    Grant("query", "EXECUTE", f"FUNCTION {SEARCH.signature}"),
    # The client checks the binding before asking, and audits a refusal itself.
    Grant("query", "SELECT", "TABLE deployment_bindings, database_identity"),
    Grant("query", "SELECT, INSERT", "TABLE audit_log"),
    Grant("auditor", "SELECT", "TABLE audit_log, deployment_bindings, policy_counts, database_identity"),
    Grant("dpo", "EXECUTE", f"FUNCTION {SUBJECT_RECORDS.signature}, {SUBJECT_ERASE.signature}"),
    Grant("dpo", "SELECT", "TABLE deployment_bindings, database_identity"),
    Grant("dpo", "SELECT, INSERT", "TABLE audit_log"),
)


@dataclass(frozen=True)
class RowPolicy:
    table: str
    name: str  # after the prefix
    command: str
    roles: tuple[str, ...]  # keys of ROLES
    using: str | None = None
    check: str | None = None


# {kept}: the purposes the deployment allows to keep reads, as a text[] literal.
KEPT_PURPOSE = "purpose = ANY ({kept})"
FIRST_BINDING = "NOT EXISTS (SELECT FROM deployment_bindings)"
ROW_POLICIES = (
    *(RowPolicy(table, "writer_kept", "ALL", ("writer",), KEPT_PURPOSE, KEPT_PURPOSE) for table in KEPT_TABLES),
    RowPolicy("deployment_bindings", "read_binding", "SELECT", ("writer", "query", "auditor", "dpo"), "true"),
    # The first binding only: a changed deployment is bound by the owner (anpr policy migrate).
    RowPolicy("deployment_bindings", "first_binding", "INSERT", ("writer",), check=FIRST_BINDING),
)
RLS_TABLES = tuple(dict.fromkeys(policy.table for policy in ROW_POLICIES))

QUERY_TABLES = (
    f"CREATE TABLE IF NOT EXISTS {PURPOSES_TABLE} ("
    "purpose text PRIMARY KEY, hits_only boolean NOT NULL, fingerprint text NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS {AGENTS_TABLE} ("
    f"purpose text NOT NULL REFERENCES {PURPOSES_TABLE} ON DELETE CASCADE, agent text NOT NULL, "
    "PRIMARY KEY (purpose, agent))",
    f"CREATE TABLE IF NOT EXISTS {DPO_TABLE} (login text PRIMARY KEY, fingerprint text NOT NULL)",
)

# The SQL below has no "%" and no ":name": it goes through SQLAlchemy's text().

# In every function: the audit entry given must be this request's ({action}, {details}, by
# the login) and the next one of the log; it is inserted under the log's lock.
AUDIT_ENTRY_SQL = """
    IF p_actor IS DISTINCT FROM session_user OR p_action IS DISTINCT FROM '{action}'
        OR p_details::jsonb IS DISTINCT FROM {details} THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'the audit entry given is not this request''s (actor, action or details)';
    END IF;
    PERFORM pg_advisory_xact_lock({lock});
    LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE;
    SELECT seq, entry_hash INTO v_last_seq, v_last_hash FROM audit_log ORDER BY seq DESC LIMIT 1;
    IF p_seq IS DISTINCT FROM coalesce(v_last_seq, 0) + 1
        OR p_prev_hash IS DISTINCT FROM coalesce(v_last_hash, '{genesis}') THEN
        RAISE EXCEPTION USING ERRCODE = '40001',
            MESSAGE = 'the audit entry given is not the next one: the last is entry ' || coalesce(v_last_seq, 0);
    END IF;
    INSERT INTO audit_log (seq, at, actor, action, details, prev_hash, entry_hash)
        VALUES (p_seq, p_at, p_actor, p_action, p_details, p_prev_hash, p_entry_hash);
"""

# Every function runs as the owner, with the search path pinned (no object of the caller's
# can stand in for a table), and gives times to the last digit.
FUNCTION_HEADER_SQL = """
CREATE OR REPLACE FUNCTION {function}({arguments}) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = {schema}, pg_temp
SET extra_float_digits = 1
"""

STALE_ROLES_SQL = """
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = 'the database does not serve the deployment its roles were set for: '
                || 'its owner must run anpr db init-roles with the config of the deployment it serves';
"""

SEARCH_FUNCTION_SQL = """
{header}AS $search$
DECLARE
    v_hits_only boolean;
    v_fingerprint text;
    v_last_seq bigint;
    v_last_hash text;
    v_now double precision := extract(epoch FROM now());
    v_found jsonb;
BEGIN
    SELECT hits_only, fingerprint INTO v_hits_only, v_fingerprint FROM {purposes} WHERE purpose = p_purpose;
    IF NOT FOUND OR NOT EXISTS (SELECT FROM {agents} WHERE purpose = p_purpose AND agent = session_user) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = 'login ' || quote_ident(session_user) || ' is not a designated agent of purpose '
                || quote_literal(p_purpose);
    END IF;
    IF v_fingerprint IS DISTINCT FROM (SELECT fingerprint FROM deployment_bindings ORDER BY id DESC LIMIT 1) THEN
        {stale}
    END IF;
    {audit}
    v_hits_only := v_hits_only AND coalesce(p_procedure, '') = '';
    WITH found AS (
        SELECT r.id, r.hit, to_jsonb(r) AS data FROM reads r
        WHERE NOT p_passages AND r.plate_key = p_plate_key AND r.purpose = p_purpose AND r.delete_after > v_now
        UNION ALL
        SELECT p.id, p.hit, to_jsonb(p) FROM passages p
        WHERE p_passages AND p.plate_key = p_plate_key AND p.purpose = p_purpose AND p.delete_after > v_now
    )
    SELECT jsonb_build_object(
        'rows', coalesce(jsonb_agg(data ORDER BY id) FILTER (WHERE hit OR NOT v_hits_only), '[]'::jsonb),
        'withheld', count(*) FILTER (WHERE v_hits_only AND NOT hit))
    INTO v_found FROM found;
    RETURN v_found;
END
$search$
"""

# A data subject's requests (storage/subjects.py): every record of the plate's keys, whatever
# its purpose and deadline (what is held, not what a query may see); the erasure leaves the
# hits of the rules that keep them ({keep}, subjects.KEEP_HITS) and returns them as kept.
SUBJECT_FUNCTION_SQL = """
{header}AS $subject$
DECLARE
    v_last_seq bigint;
    v_last_hash text;
    v_deleted bigint := 0;
    v_count bigint;
BEGIN
    IF NOT EXISTS (SELECT FROM {dpos} WHERE login = session_user) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = 'login ' || quote_ident(session_user)
                || ' is not a data-protection officer of the deployment (controller.dpo)';
    END IF;
    IF (SELECT fingerprint FROM {dpos} WHERE login = session_user)
        IS DISTINCT FROM (SELECT fingerprint FROM deployment_bindings ORDER BY id DESC LIMIT 1) THEN
        {stale}
    END IF;
    {audit}
    IF {erase} THEN
        DELETE FROM reads WHERE plate_key = ANY (p_plate_keys) AND NOT (hit AND rule_id = ANY ({keep}));
        GET DIAGNOSTICS v_count = ROW_COUNT;
        v_deleted := v_count;
        DELETE FROM passages WHERE plate_key = ANY (p_plate_keys) AND NOT (hit AND rule_id = ANY ({keep}));
        GET DIAGNOSTICS v_count = ROW_COUNT;
        v_deleted := v_deleted + v_count;
    END IF;
    RETURN jsonb_build_object(
        'deleted', v_deleted,
        'reads', (SELECT coalesce(jsonb_agg(to_jsonb(r) ORDER BY r.id), '[]'::jsonb) FROM reads r
                  WHERE r.plate_key = ANY (p_plate_keys)),
        'passages', (SELECT coalesce(jsonb_agg(to_jsonb(p) ORDER BY p.id), '[]'::jsonb) FROM passages p
                     WHERE p.plate_key = ANY (p_plate_keys)));
END
$subject$
"""
# The details each function's audit entry must have (storage/subjects.py makes them): the
# request, never what it found, which is not known when the entry is made. The request's
# own keyed hash of the plate cannot be checked here (the database has no key).
REQUEST_DETAILS = (
    "jsonb_build_object('request_key', p_details::jsonb ->> 'request_key', 'forms', cardinality(p_plate_keys){more})"
)


@dataclass(frozen=True)
class RolesReport:
    roles: dict[str, str]  # ROLES key -> role name
    created: list[str]  # the roles made by this run
    kept: list[str]  # the purposes whose reads the writer may store
    agents: dict[str, list[str]]  # purpose -> its designated agents
    dpo: list[str]  # the data-protection officers (controller.dpo)
    not_ready: list[tuple[str, str]]  # (login, ROLES key): no login yet, or not granted that role


def role_names(prefix: str) -> dict[str, str]:
    if not PREFIX.fullmatch(prefix):
        raise ConfigError(f"role prefix {prefix!r}: lower-case letters, digits and _, starting with a letter")
    return {role: f"{prefix}_{role}" for role in ROLES}


def statements(prefix: str, schema: str, kept: list[str]) -> list[str]:
    """The statements that give the roles of `prefix` exactly their grants and row
    policies, and make the query and officer tables (not their rows) and the functions;
    `kept`: the purposes the deployment allows to keep reads; `schema`: where the tables are."""
    roles = role_names(prefix)
    everyone = ", ".join(["PUBLIC", *roles.values()])
    values = {"kept": _text_array(kept)}
    return [
        *QUERY_TABLES,
        *_functions(schema),
        f"REVOKE ALL ON TABLE {', '.join([*TABLES, PURPOSES_TABLE, AGENTS_TABLE, DPO_TABLE])} FROM {everyone}",
        f"REVOKE ALL ON SEQUENCE {', '.join(SEQUENCES)} FROM {everyone}",
        f"REVOKE ALL ON FUNCTION {', '.join(f.signature for f in FUNCTIONS)} FROM {everyone}",
        *(f"GRANT {grant.privileges} ON {grant.on} TO {roles[grant.role]}" for grant in GRANTS),
        *(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY" for table in RLS_TABLES),
        *(f"DROP POLICY IF EXISTS {prefix}_{policy.name} ON {policy.table}" for policy in ROW_POLICIES),
        *(_create_policy(prefix, policy, roles, values) for policy in ROW_POLICIES),
    ]


def _functions(schema: str) -> list[str]:
    """CREATE OR REPLACE of the search function and the two subject functions."""
    common = {"stale": STALE_ROLES_SQL.strip()}

    def header(function: Function) -> str:
        return FUNCTION_HEADER_SQL.format(
            function=function.name, arguments=function.declaration, schema=_identifier(schema)
        ).lstrip("\n")

    def audit(action: str, details: str) -> str:
        return AUDIT_ENTRY_SQL.format(action=action, details=details, lock=APPEND_LOCK, genesis=GENESIS).strip()

    search_details = (
        "jsonb_build_object('purpose', p_purpose, 'plate_key', p_plate_key, 'procedure', p_procedure, "
        "'passages', p_passages)"
    )
    subject = {"dpos": DPO_TABLE, "keep": _text_array(list(KEEP_HITS)), **common}
    return [
        SEARCH_FUNCTION_SQL.format(
            header=header(SEARCH),
            purposes=PURPOSES_TABLE,
            agents=AGENTS_TABLE,
            audit=audit("query", search_details),
            **common,
        ),
        SUBJECT_FUNCTION_SQL.format(
            header=header(SUBJECT_RECORDS),
            audit=audit("subject-access", REQUEST_DETAILS.format(more="")),
            erase="false",
            **subject,
        ),
        SUBJECT_FUNCTION_SQL.format(
            header=header(SUBJECT_ERASE),
            audit=audit("erase", REQUEST_DETAILS.format(more=", 'reason', p_reason")),
            erase="true",
            **subject,
        ),
    ]


def _create_policy(prefix: str, policy: RowPolicy, roles: dict[str, str], values: dict[str, str]) -> str:
    clauses = [
        f"CREATE POLICY {prefix}_{policy.name} ON {policy.table} FOR {policy.command}",
        f"TO {', '.join(roles[role] for role in policy.roles)}",
        *([f"USING ({policy.using.format(**values)})"] if policy.using else []),
        *([f"WITH CHECK ({policy.check.format(**values)})"] if policy.check else []),
    ]
    return " ".join(clauses)


def init_roles(store: ReadStore, audit: AuditLog, policy: Policy, prefix: str, user: str) -> RolesReport:
    """Create the roles (if missing), their grants, row policies, the query tables filled
    from the deployment and the search function, in one transaction, audited as
    'roles.init'. Refused for a database that serves another deployment."""
    roles = role_names(prefix)
    if store.engine.dialect.name != "postgresql":
        raise StoreError(f"{store.safe_url}: roles are for PostgreSQL (a SQLite file has its file permissions only)")
    deployment = policy.deployment
    fingerprint = deployment.fingerprint()
    bound = store.binding()
    if bound is not None and bound.fingerprint != fingerprint:
        raise PolicyRefusal(
            f"database {store.safe_url} serves deployment '{bound.name}' ({bound.fingerprint[:12]}), not this "
            f"config ({fingerprint[:12]}): bind it first with `anpr policy migrate`"
        )
    kept = {code: decision for code, decision in policy.decisions.items() if decision.stores_reads}
    agents = {code: list(deployment.purposes[code].safeguards.designated_agents) for code in kept}
    everyone = sorted({agent for names in agents.values() for agent in names})
    officers = list(deployment.controller.dpo)
    try:
        with Session(store.engine) as session, session.begin():
            schema = session.execute(text("SELECT current_schema()")).scalar_one()
            existing = set(
                session.execute(
                    text("SELECT rolname FROM pg_roles WHERE rolname = ANY(:names)"), {"names": list(roles.values())}
                ).scalars()
            )
            created = [name for name in roles.values() if name not in existing]
            for name in created:
                session.execute(text(f"CREATE ROLE {name} NOLOGIN"))
            for statement in statements(prefix, schema, list(kept)):
                session.execute(text(statement))
            session.execute(text(f"DELETE FROM {PURPOSES_TABLE}"))
            for code, decision in kept.items():
                session.execute(
                    text(f"INSERT INTO {PURPOSES_TABLE} VALUES (:purpose, :hits_only, :fingerprint)"),
                    {
                        "purpose": code,
                        "hits_only": decision.rule.retention.no_hit_query_needs_procedure,
                        "fingerprint": fingerprint,
                    },
                )
                for agent in agents[code]:
                    session.execute(
                        text(f"INSERT INTO {AGENTS_TABLE} VALUES (:purpose, :agent)"), {"purpose": code, "agent": agent}
                    )
            session.execute(text(f"DELETE FROM {DPO_TABLE}"))
            for login in officers:
                session.execute(
                    text(f"INSERT INTO {DPO_TABLE} VALUES (:login, :fingerprint)"),
                    {"login": login, "fingerprint": fingerprint},
                )
            wanted = [(agent, "query") for agent in everyone] + [(login, "dpo") for login in officers]
            not_ready = [(login, role) for login, role in wanted if not _ready(session, login, roles[role])]
            details = {
                "prefix": prefix,
                "fingerprint": fingerprint,
                "created": created,
                "agents": agents,
                "dpo": officers,
            }
            audit.append("roles.init", user, details, session=session)
    except SQLAlchemyError as exc:
        raise database_error(exc)(f"cannot set the roles of {store.safe_url}: {first_line(exc)}") from None
    return RolesReport(roles, created, list(kept), agents, officers, not_ready)


def _ready(session: Session, login: str, role: str) -> bool:
    """Whether `login` is a login granted `role`."""
    found = session.execute(
        text("SELECT 1 FROM pg_roles WHERE rolname = :login AND rolcanlogin AND pg_has_role(oid, :role, 'USAGE')"),
        {"login": login, "role": role},
    )
    return found.first() is not None


def _text_array(values: list[str]) -> str:
    return f"ARRAY[{', '.join(_literal(value) for value in values)}]::text[]"


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
