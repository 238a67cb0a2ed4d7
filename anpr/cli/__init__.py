"""The command line: `main` (run, eval, bench, demo) and `admin` (policy, db, audit,
report). It parses and prints; the work is in the stages.

Imports any stage.
"""
