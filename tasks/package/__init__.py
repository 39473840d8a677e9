"""`doit delta`: the plan of changes from base to target, the patches, the room on the module,
the updater-script and the `update.zip` that carries them, and the work made ahead for delta.
May import: core, state, formats, settings, report, build.
"""
