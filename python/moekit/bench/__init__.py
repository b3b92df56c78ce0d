"""What `moekit check` and `moekit bench` run: the op families (registry.py, families.py), the runner
(runner.py: progress, table, JSON, plot) and the timing core shared with the scripts in bench/
(_timing.py). Importing this package imports no framework: torch is imported when a run starts.
"""

from .registry import Cell, Family, Unavailable, families, family_names, op_names, register

__all__ = ["Cell", "Family", "Unavailable", "families", "family_names", "op_names", "register"]
