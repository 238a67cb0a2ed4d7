"""The law as data (rules), the deployment's decision per camera and purpose (engine),
and the gate every read passes in the hot loop (gate).

Imports the top level, config and reading.
"""
