"""The file formats, read and written: Android boot image, Qualcomm ELF, UBI images and their
UBIFS, zips (symlinks, modes, fixed times), edify (writer and parser), the vendor lists, the
version file.
May import: core, state.
"""
