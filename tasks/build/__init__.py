"""`doit targetfiles`: the SDK's output scanned into manifests, assembled with the source
into the target `targetfiles.zip`, archived per version; release firmware imported as bases.
May import: core, state, formats, settings, report.
"""
