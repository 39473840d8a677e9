"""`doit delta`: the plan of changes from base to target, the patches (engine, workers), the
room on the module, the updater-script, the `update.zip` that carries them and its summary,
one package per base, and the work made ahead for delta.
May import: core, state, formats, settings, report, build.
"""
