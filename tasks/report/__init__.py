"""The package's summary (`update.json`) and its HTML report, for people and for nightly jobs.
May import: core, state, formats, settings.
"""
