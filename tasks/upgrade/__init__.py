"""After the proof: proven packages sent to modules (`doit upgrade` over ADB and AT ports),
served over HTTP(S) (`doit serve`), and a twin of a module for tests (`doit twin`).
May import: every part below it (core to proof).
"""
