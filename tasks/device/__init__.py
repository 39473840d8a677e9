"""The module on the host: its file system and partitions (`fs.Device`, in layers from
`storage` up; their bytes held or left where they lie, `contents`), the updater that runs a
package's script the way the module's does (`updater`, `interpreter` and its functions), and
every power loss during it (`power_loss`).
May import: core, state, formats, settings, report, build, package.
"""
