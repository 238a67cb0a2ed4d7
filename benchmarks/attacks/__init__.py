"""The red-team attacks, one module per group (`benchmarks/red_team.py` runs them all)."""
