"""anpr: automatic number-plate recognition that is fast, accurate and lawful by construction.

Stages, one module each, in the order data flows:
source (frames) -> detect (plate boxes) -> ocr (plate text) -> plates (normalised reads)
-> policy (the gate: per purpose allow or deny, retention) -> store (database) and sinks;
pipeline.py holds the loop that joins them, cli.py the commands.
"""

__version__ = "0.1.0"
