"""anpr: automatic number-plate recognition that is fast, accurate and lawful by construction.

Stages, one module each, in the order data flows:
source (frames) -> detect (plate boxes) -> ocr (plate text) -> plates (normalised reads)
-> track (settled plates, passages) -> policy (the gate: per purpose allow or deny,
retention) -> store (database), spool and sinks.

records.py defines what travels between them; registry.py names the swappable parts;
config.py holds the validated settings; pipeline.py is the loop that joins the stages;
assemble.py builds a run from the settings; cluster.py spreads a run's cameras over the
machines of a Ray cluster; outputs.py is what the operator sees; cli.py parses and prints.
"""

__version__ = "0.1.0"
