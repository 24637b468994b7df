"""``conceptmine serve``: one local server for search, read-only SQL and the explorer page.

- ``app.py``: the Starlette application (JSON endpoints, the page, errors as 4xx JSON).
- ``store.py``: the store read through ``store_sql``'s read-only views, reopened when files change.
- ``browse.py``: the crop grid (filters, keyset paging), crop detail, the mined split.
- ``similar.py``: the search index kept loaded (reloaded when ``search_index`` is rematerialised),
  free-text search and "more like this".
- ``frame.py``: the camera frame with every box drawn, the chosen one highlighted.
- ``reviews.py``: the review endpoints (``lib/reviews.py`` holds the log's pure logic).
- ``main.py``: starts uvicorn (127.0.0.1 unless ``--host`` says otherwise).
- ``static/``: the page (``index.html``, ``explorer.js``, ``explorer.css``; no build step).

Nothing here imports Dagster, torch or transformers in the offline profile.
"""
