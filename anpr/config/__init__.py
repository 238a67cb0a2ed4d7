"""Configuration as validated models, apart from processing: the run settings (settings),
the deployment (deployment) and the keys every sink entry has (sinks).

Imports only anpr's top-level modules (errors, records, registry, redact, files, formats).
"""
