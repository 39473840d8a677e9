"""Tools beside the product: the sample SDK generator (`sample/`, `doit sample`) and the
production-size benchmark (`bench/`, `python -m dfota.tools.bench`, `doit bench`).
May import: every part of the engine (core to upgrade); never the doit wiring.
"""
