"""What is kept and its proofs: the database, the outage spool and the on-disk outbox,
the audit log, the key, the deployment's binding, who may query, a data subject's
requests and the PostgreSQL roles.

Imports the top level, config, reading and policy.
"""
