"""`doit targetfiles`: the SDK's output scanned into manifests, checked against its own image,
assembled with the source into the target `targetfiles.zip`, archived per version; release
firmware checked against its images and imported as bases (`doit import_base`).
May import: core, state, formats, settings, report.
"""
