"""The values every part shares: the one error type and exit codes, atomic files and their
owners, the run log, worker processes, the tree of entries, the volume sizes.
May import: nothing of dfota but its version.
"""
