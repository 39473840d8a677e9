"""The doit wiring: the loader (loader), the one configuration of a command (params, options,
configure), how an action runs (action) and the task creators by group (chain, housekeeping,
modules, tools), which only wire; the work is done in the parts below, called by the actions.
May import: every part but cli.
"""
