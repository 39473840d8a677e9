"""Tools beside the product: the sample SDK generator and the production-size benchmark.
May import: every part of the engine (core to upgrade); never the doit wiring.
"""
