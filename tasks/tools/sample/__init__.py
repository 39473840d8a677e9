"""The sample SDK: the base version's release firmware package and the next version's SDK
build, from a fixed seed (`generate.generate_sample`); the trees are plain data (`rootfs`,
`images`), packed by the vendor's own tools (`vendor_tools`, `ubi_images`).
May import: core and formats; the benchmark builds its pair on it.
"""
