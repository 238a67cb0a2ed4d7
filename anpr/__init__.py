"""anpr: automatic number-plate recognition that is fast, accurate and lawful by construction.

A folder per stage, in the order data flows (each folder's __init__ says what it holds
and what it may import; a module never imports from a later stage):

    config/   validated settings: run settings, the deployment, the keys of a sink entry
    reading/  frames -> plate boxes -> plate text -> normalised reads -> tracks
    policy/   the gate: per purpose allow or deny, retention, from the rule table
    storage/  the database, the outage spool, the audit log, the key, gated queries
    sinks/    exports, webhook, MQTT
    run/      the hot loop (pipeline), the one setup path (assemble), the cluster, outputs
    measure/  eval, bench;  show/  demo, report, annotated video;  cli/  the anpr command

Shared by all: records.py (what travels between stages), registry.py (the swappable
parts by name), errors.py, redact.py, files.py (private files), formats.py (plate layouts).
"""

__version__ = "0.1.0"
