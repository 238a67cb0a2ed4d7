"""Where a purpose's kept reads go besides the database: the JSON-lines export, the
webhook, MQTT; `catalog` registers them and builds a deployment's sinks.

Imports the top level, config, policy (the sink interface) and storage (the outbox).
"""
