"""``python -m conceptmine_assets.cli``: the ``conceptmine`` command."""

from conceptmine_assets.cli.entry import main

if __name__ == "__main__":
    raise SystemExit(main())
