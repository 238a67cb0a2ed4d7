"""anpr: automatic number-plate recognition that is fast, accurate and lawful by construction.

Stages, one module each, in the order data flows:
source (frames) -> detect (plate boxes) -> ocr (plate text) -> plates (normalised reads)
-> store (database); pipeline.py holds the loop that joins them, cli.py the commands.
"""

__version__ = "0.1.0"
