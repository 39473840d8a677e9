"""The production-size benchmark: a generated SDK pair on the scale of a real RG520N build, the
project's commands run on it side by side with the alternatives a user has, and a table of
ratios against the goals.

The pair comes from its plan (`plan`, `pair`), on the sample SDK's rootfs; each command runs
under a measuring wrapper (`measure`) in fresh folders (`run`, `session`), on disk and again on
a RAM disk (`places`), beside the note's shell procedure and a Debian bsdiff loop
(`alternatives`), with this checkout's code and, with `--before REV`, a git revision's in turns
(`codes`, `compare`); the big-file case measures verify's memory (`bigfile`); `findings`,
`notes` and `spent` (where the time goes) make the table, `report` writes BENCHMARKS.md with
what keeps each step fast (`means`).
`python -m dfota.tools.bench` runs it (`cli`).
May import: every part of the engine (core to upgrade) and the sample; never the doit wiring.
"""
