"""What Dagster runs besides the assets, wired in by ``definitions.py``: declarative automation
(``automation.py``), the scene-discovery sensor (``sensors.py``), the asset checks
(``checks.py``) and the executor profiles (``scaling.py``; ``dask_executor.py`` is the one copy
of Dagster executor code)."""
