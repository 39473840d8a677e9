"""After the proof: proven packages sent to modules (`doit upgrade`: upgrade.py and its steps),
served over HTTP(S) (`doit serve`: serve.py), and a twin of a module for tests (`doit twin`:
twin.py and its twin_* pieces).
May import: every part below it (core to proof).
"""
