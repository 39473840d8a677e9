"""`doit verify`: a package proved on the host model, from the base to the target, with a
power loss after every step and Debian's unzip and bspatch beside, before it is published.
May import: core, state, formats, settings, report, build, package, device.
"""
