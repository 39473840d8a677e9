"""Build DFOTA targetfiles and update packages for Quectel RG520N / RG52xF QuecOpen modules.

The folder tasks/ is the package `dfota`. Its parts, from the lowest layer up (each may import
only itself and the ones before it; tests/test_layout.py checks): core, state, formats, the
settings, report, build, package, device, proof, upgrade, tools, commands, cli. See
docs/architecture.md.
"""

__version__ = "0.1.0"
