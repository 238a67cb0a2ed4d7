"""A run: the hot loop (pipeline), what it is built from (assemble), spread over a Ray
cluster (cluster), and what the operator sees while it runs (outputs).

Imports every stage below it: the top level, config, reading, policy, storage, sinks.
"""
