"""What keeps each step of the chain fast, as BENCHMARKS.md explains it below the figures:
each means and what it saved when it came, measured on the benchmark's pair."""

MEANS = """\
## What keeps the steps fast

Each means below was measured on the benchmark's pair when it came: the figures in this section
are from then, the tables above from the latest run. Diffs run in worker processes sized to the
cores, largest first, with a patch cache under `build/patch-cache/` keyed by source sha1, target
sha1 and engine version; a second run with nothing changed does nothing. The other means:

- The SDK's `sdxlemur-sysfs.ubi` (about a second of decompressing) is read in a worker process
  that the inputs step `_targetfiles_inputs` starts as soon as the image is hashed, before it
  walks the rootfs, and whose tree is kept in a record (`<state>/records/sdk-image-tree/`) by
  the image's sha1 and the UBI reader's code: an unchanged image is not read again (a run that
  ends without asking for the tree still waits for the worker, so the next finds it recorded).
  Readers of a workspace take turns (a lock, `sdk-image-tree.reading`): `targetfiles` starts its
  own, which finds the tree recorded when its turn comes (a fresh `doit targetfiles` on the
  benchmark pair: 1.86-1.94 s, 1.75-1.76 s with the read started by the inputs step). The
  reader checks every node where the image is mapped, through a memoryview (no node copied),
  every data node's checks made in one pass (0.70-0.76 s, then 0.62-0.63 s for the pair's
  image). A source named with `--source` is hashed by a thread beside the rootfs walk (reading
  and hashing let the interpreter go), and a source new to the archive is staged (a kernel
  copy, synced) by a thread while the target zip is written (fresh `doit targetfiles`: 1.54-1.65
  s with both). The target zip is written once,
  straight into the archive's staging folder, and its sha256 taken as it is written;
  `out/targetfiles.zip` is a hard link to the archived zip (a kernel copy where `out/` lies on
  another file system), and `prune` keeps the version `out/` points to. Each archived version
  keeps `members.json`, the sha1 and place of each member: a member the previous target holds
  with the same sha1, name, mode and time is copied from it by the kernel (`copy_file_range`),
  neither read nor hashed (after a one-file change on the benchmark pair: 3 entries written,
  1.4 MB, and 5,530 copied, 233 MB; `doit targetfiles` 0.92-1.19 s against 2.16-2.34 s when the
  whole zip was written twice). The archived zip is still checked against its manifest's
  sha256 whenever its size, times or inode changed. The source is named in the
  inputs manifest by its sha256 as `<state>/digests.json` records it (and found once per run:
  the build takes the one the inputs manifest found), so archiving it is a kernel copy
  (`sendfile`) with nothing hashed again, as long as it keeps the size, times and inode it had
  when hashed (else it is hashed as it is copied). The rootfs is walked and hashed once per run:
  `_targetfiles_inputs` keeps its scan in a record by the inputs manifest
  (`<state>/records/rootfs-scan/`, rewritten only when it changed), which the build takes (`doit
  -s targetfiles`, which skips the inputs step, walks the rootfs again); as it is zipped, a file
  the digest cache knows as it is (not written in the last 2 s, which a write in the same clock
  tick could hide) is copied without hashing and must keep its size, times and inode while
  copied; any other is hashed again and must give the sha1 it was planned with. Paths are text
  rather than `pathlib` objects, and `META/system_manifest.json` is written one entry a line by
  json's C encoder. The staged zip is synced to disk by a thread while the drift check
  runs, and is on disk before its folder is renamed into the archive (a first build syncs
  about 456 MB on the benchmark pair, where writing the zip twice synced 690 MB). The UBI
  reader maps the image and unpacks index branches and data-node headers in place (parsing each
  of the image's 60,000 nodes into objects cost more than decompressing them); the mapped image
  counts in the reader's resident memory (file pages the kernel can drop, not allocations).
- What `delta` asks for that needs only the inputs manifest is made ahead by the private task
  `_delta_ahead`, which `delta` depends on (so `doit targetfiles` alone never runs it): the
  sha1s of a base not built here (kept as `delta` keeps them, below) and the kernel's patch from
  the base's boot image to the SDK's (in the patch cache, applied and checked again when `delta`
  takes it), the kernel's diff in a worker while the sha1s are taken. The base is `delta`'s:
  `--base`, else the source the inputs manifest names. It runs once the inputs manifest is
  written, in its own task process beside `targetfiles` (whose process waits on the kernel's
  copying and syncing for part of its time), and is up to date while the inputs manifest and
  `delta`'s `base`, `mode` and `diff_timeout` are (`<state>/delta-ahead.json` is its target).
  Its log (`*-_delta_ahead.log`) says what was made and how long it took; a failure there is
  silent, since `delta` meets the same input and reports it. On the benchmark pair it takes
  about 1.3 s of CPU off `delta`. On the benchmark's machine a fresh `targetfiles` is bound by
  the CPU, not the disk: with every fsync removed (a trial, not the tool) it was no faster.
- `delta` takes the sha1s of `SYSTEM/` from `META/system_manifest.json` for a zip this tool
  built and archived (byte-identical to the archived copy) and hashes every member of any other
  zip. `verify` hashes every file of the source itself (once per source zip, below) and takes
  the same record for the target: a wrong record could only fail its checks, never pass them,
  since every file the package leaves on the modeled module is hashed from its bytes (a test
  shows both ways: a wrong sha1 of a patched and of an untouched file each fail "result equals
  the target"). A stored member is
  hashed straight from the file (its CRC checked), not through Python's zip reader, which cost
  more than the hashing for small files. The member sha1s of a base not built here are kept in a
  record keyed by the zip's sha256 (`<state>/records/member-sha1s/`): the next `delta` on the
  same base hashes none of them.
- Archived zips are checked against their manifest's sha256 before use; the sha256 of each
  archived zip (and of `out/targetfiles.zip`, a copy of one) is kept in `<state>/digests.json`
  by path with its size, modification and change times and inode, and hashed again only when one
  of them changed (a write, a chmod, a rename, another file).
- What is kept between runs is all in the state folder, in three forms (`tasks/state/store.py`):
  `digests.json`, the digests of files by path for any algorithm (the rootfs's sha1s, the zips'
  sha256s), each trusted while the file's size, times and inode stay as they were when hashed;
  `records/<name>/`, keyed records (the SDK image's tree, a base's member sha1s, the patches
  `bspatch` proved), each written with the digest of the tool's own code, so a record of another
  version of the tool is rebuilt, never read; and `patch-cache/`. A damaged file there is
  rebuilt without a word. A state folder of an earlier version of the tool is taken over: its
  two digest caches (`hash-cache.json`, `archive-sha256.json`) are read into `digests.json`, its
  other records (`member-sha1s/`, `bspatch-proven.json`, `sdk-image-tree.json`) are removed
  unread and rebuilt when next needed.
- `delta` starts the kernel's diff (the largest) in a worker process before it hashes the trees
  and plans the other files, whose diffs then join the same pool of workers (one per core). No
  thread runs beside them, so every worker is a plain fork of `delta`, which has the modules
  loaded and the small pairs read already (with a thread alive, workers come from a fork server:
  a fresh interpreter that imports the engine, and data sent through a pipe; that cost `delta`
  about 1 s on the benchmark pair).
- `verify` runs the package once per chunk of replays on one copy of the module and, at each
  power-loss point, tries the re-run on that copy and undoes it from a journal of the changes (a
  test checks every step against a fresh copy per replay). The module model keeps a digest of
  each directory's contents, forgotten up the tree on every change, so the whole device is
  compared with the whole run's state after each statement in microseconds; a re-run stops where
  it rejoins that run (tests: the kept digest equals one computed afresh after every step and
  every undo, and after random changes in and out of trials, and `verify` finds the same
  problems with every re-run taken to its end). A directory's digest sums its children's shares
  (2,048 bits of SHAKE-256 of name and digest, modulo 2^2048; at that width finding two sets of
  children with one sum takes more entries than a file system holds) and takes again only the
  shares of the children that changed, so a change in a big folder (`usr/lib`: 824 entries)
  costs what changed, not the folder's size. No content is held whole
  (`tasks/device/contents.py`): files are hashed and copied in 1 MiB pieces and left where they
  lie (a member of the source's zip, an entry of the package, a temporary file of the run), and
  only a patch's work (source, patch, output) is held, one patch at a time; small contents are
  kept once read, up to 64 MiB a run. Each source file is hashed once (its CRC checked), and
  must still have that sha1 when the package first uses it. On a package that ships a 2 GiB
  file of zeros whole, `verify`'s peak went from 6,345,648 KB to 35,548 KB, and the chain runs
  under a 1 GiB address-space limit (`tests/test_big_entry.py`). `unzip
  -tq` starts first and Debian's `bspatch` as soon as the pre-check passed, a run per core on
  threads, while the whole run, the replays and the tampered source go on; each result is taken
  where its check comes (an error starting them too), and before the replays fork workers no
  `bspatch` runs. The zips' members, the trees and the modeled module are frozen out of the
  cyclic garbage collector's walks (`gc.freeze`) until `verify` returns. A re-run skips the
  units before the cut that are settled (`tasks/device/power_loss.py`, `docs/updater-model.md`):
  a statement, a file of `package_extract_dir`, a node of a recursive mode, run again on the
  state it left without changing anything, and nothing it read changed since (a mode it set that
  a later unit sets back does not count). Tests compare every step's re-run with the module's
  full re-run from the first statement. On the cross-baseline package (sample release firmware
  to the benchmark's rootfs: 9,839 steps, 3,880 new files, 4,601 permission steps) the power
  losses at all 9,839 steps take 4.4 s on two cores (`doit verify` 7.1 s, `doit delta` 10.8 s),
  where 5,270 of them (32 permission steps) took 290 s before. The model keeps what replays
  repeat: the bytes and sha1 of each package entry (every re-run extracts the same files), the
  components of each path, and a walk of a path without links or `..` in one loop; a read file
  and a resolved path are named tuples (measured with `valgrind --tool=callgrind`, which counts
  instructions whatever the machine's load: 34.2 -> 21.7 million per replay on the benchmark
  pair).
- After a one-file change (the benchmark's: one 292 KB library and `Package Time`) the chain
  redoes only what depends on the change, each shortcut keyed on what it depends on. `verify`
  keeps the sha1s it hashed from the source's bytes in its own record
  (`<state>/records/verify-source-sha1s/`), keyed by the zip's sha256 (the digest cache's, by
  stat), and takes them again for the same zip, never `delta`'s record; every file the package
  reads is still checked against its sha1 as it is read, so a wrong record fails the proof
  (tests: a wrong sha1 of a patched file stops verify, of an untouched one fails "result equals
  the target"). `_delta_ahead` makes nothing that an earlier run kept: with the base's sha1s in
  their record and the kernel's patch in the cache it does not even open the base (`delta` still
  checks that patch when it takes it). A patch checked once (by its worker, or by `delta` taking
  it from the cache) is not applied again: `<state>/records/patch-proven/` keeps its name, the
  sha256 of its bytes and the target's size under the tool's and bsdiff4's versions, and the
  bytes read from the cache must hash to it (the one-file chain's `delta`, its 77 cached
  patches: about 0.70 -> 0.51 s of user CPU). A zip's names and its entries below a symlink
  are checked with substring tests and a bisect over the sorted names, not a walk of every
  prefix (an open of the 5,500-entry targetfiles.zip: 0.04 -> 0.025 s; nine opens per chain).
  On the benchmark pair the one-file chain went from 2.17 to about 1.9 s of user CPU (a later
  sample, 7 chains each alternating, before and after the patches' proofs: 2.00 -> 1.89 s). What
  is left is mostly the design's: the new targetfiles.zip is a full zip (232 MB copied by the
  kernel from the previous one, about 0.25 s), `verify` proves the new package whole (471
  power-loss replays, the apply, Debian's `bspatch`), and each of the four task processes
  imports its modules and opens and checks the 5,500-entry zips it reads again (Python's zip
  reader alone costs about 0.015 s per open).
- Later means for the one-file chain (on the benchmark pair, 2.1 -> 2.0 s on disk and
  2.5 -> 2.2 s on the RAM disk in one run, before and after them):
  `targetfiles` compares the rootfs with the SDK image's tree in a thread from the start of
  its assembly, which is mostly the kernel's copy and the disk's write (0.08-0.14 s were after
  the zip's write; its lines are still said, and `--strict` still stops, before anything is
  archived); the zip writer and the archive's copy of a source ask the kernel to start writing
  every 16 MB as they go (Linux's `sync_file_range`; advice only, the sync at the end still
  decides), so the final sync of the new 235 MB zip waits under 0.01 s instead of 0.12-0.14 s;
  `delta` writes an entry the workspace's last package holds with that package's deflated
  bytes (compared, inflated, with the entry's bytes first; only while a record names that
  package's sha256 and the same deflater: Python's zipfile, zlib's version and level), which
  took its zipping from 0.2 s to under 0.05 s; `_delta_ahead` loads `delta`'s modules, jinja2
  and detools when the inputs manifest names a target the package summary does not, so
  `delta`, which runs next in that task process, starts with them loaded (its task 0.36 ->
  0.28 s, median of 8 alternating). A zip's members are named tuples and the updater-script's
  quoting and lexing take a plain string whole (delta's task about 0.45 -> 0.375 s with the
  reused streams).
- doit's check of file dependencies compares size, time and inode instead of an md5 of each file
  (which read each 200 MB `targetfiles.zip` twice per task): every file the tool writes is
  renamed into place.
- Pairs up to 32 MB a side (the kernel's too) are read by `delta`, which has both zips open, and
  reach their forked worker in its memory: the worker opens no zip.
- Diffs of pairs up to 256 KB run a batch to a worker (a process per small diff cost more than
  the diff); the diff reader and the package writer use the zips `delta` already has open.
- doit keeps its record of the runs (`.doit.db`) in sqlite3 with a write-ahead log whose commits
  are not synced (`WalSqliteDB`, registered in `pyproject.toml`): the synced commit of the stock
  backend cost every `doit` about 0.2 s after a run that wrote a lot, half of a run with nothing
  to do. A power cut may lose the record of the last run (its tasks run again and find their
  work done), never corrupt it. Run from another folder (`doit -f .../dodo.py`), doit uses its
  stock sqlite3 backend; on a network file system, where sqlite's write-ahead log is not safe,
  pass `--backend sqlite3` to every `doit`.
- A `doit` with nothing to do (the second chain) does only what tells it so. The modules that do
  the work are imported by the task that runs, and what every run imports is light on purpose:
  the inputs manifest (`build/inputs.py`, not the target's assembly and its zip writer),
  verify's check that `out/update.zip` is the package proven (`proof/published.py`, its sha256
  by its stat in the digest cache; importing the proof, the host model and jinja2 for it cost
  0.08 s) and `--mode`'s parts (`package/mode.py`, not the plan). The rootfs walk asks the
  digest cache once per file, comparing the stamp as it reads the entry (it asked twice, each
  time checking the entry's shape: 8,000 calls, 0.09 s under the profiler). The rootfs scan
  kept for the inputs manifest is found by its key alone, the manifest also naming what the
  scan says beside its tree (what cannot be packed, hard links with a name outside the rootfs:
  such a change makes `targetfiles` run again, a test shows it), instead of being compared as
  JSON of 5,500 entries on every run. On the benchmark pair the second chain went from 0.27 to
  0.18 s of user CPU (0.07 s of system time either way; 0.051x -> 0.039x of a first chain on a
  busy machine). What is left: Python and doit starting (0.11 s for `doit --version`), the
  walk (5,500 `lstat`s, about 0.025 s), `digests.json` read by the inputs step and by
  verify's check (0.005 s each), and doit's own checks and task process.
"""
