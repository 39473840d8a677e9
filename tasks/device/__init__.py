"""The module on the host: its file system and partitions, the updater that runs a package's
script the way the module's does, and every power loss during it.
May import: core, state, formats, settings, report, build, package.
"""
