"""The ``conceptmine`` command: its entry (``entry.py``: parser, dispatch, ``main``), the
incremental runner of ``conceptmine run`` and its pre-flight, run lock, no-change memo and quiet
terminal, and the other subcommands (sql, search, verify, import-images, reviews export).

``main`` is the console script (``conceptmine = "conceptmine_assets.cli:main"``) and
``python -m conceptmine_assets.cli`` runs it too (``__main__.py``). Importing this package stays
cheap: nothing here imports Dagster, pandas or torch at module level.
"""

from conceptmine_assets.cli.entry import UsageError, main

__all__ = ["UsageError", "main"]
