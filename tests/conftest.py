"""Session-wide set-up: the suite runs with portable numerics pinned (SPEC §5).

The pins must be in the environment before torch is imported, and this file is imported
before any test module, so pinning here makes every in-process run of the suite use the same
AVX2 code paths on every x86-64 machine: the replay corpus (recorded in portable mode)
replays in-process, and results do not depend on which CPU CI happens to get. Tests of
`native` mode run their commands in subprocesses with the pins removed
(`tests/runtime/numerics_support.py`).
"""

from esper_es.numerics import pin_portable

pin_portable()
