"""The doit wiring: the loader, the one configuration of a command, the task creators. The
work is done in the parts below; the actions here only call it.
May import: every part but cli.
"""
