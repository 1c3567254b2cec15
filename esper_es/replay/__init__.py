"""Replay, rollback and resume (SPEC §6): re-execute a run from its log, bit for bit.

- `replay(db)`: re-executes a branch from its log alone (built-in tasks) or with your code
  (`trainer_factory`), applying the recorded events at their boundaries and checking every
  `Checkpointed`; `Divergence` names the first seq, step and tensors that differ.
- `resume(db)`: continues a stopped, crashed or rolled-back run, bit-identical to a run that
  was never interrupted.
- `rollback(db, to_seq)`: opens a branch whose state is exactly the state at `to_seq`.
- `export_model` / `load_model`: a replayed model as a file, and back into a fresh host.

See docs/replay.md.
"""

from esper_es.replay.errors import Divergence, InvalidRollbackPoint, NotReplayable
from esper_es.replay.export import export_model, load_model
from esper_es.replay.replayer import ReplayResult, replay
from esper_es.replay.resume import resume
from esper_es.replay.rollback import rollback

__all__ = [
    "Divergence",
    "InvalidRollbackPoint",
    "NotReplayable",
    "ReplayResult",
    "export_model",
    "load_model",
    "replay",
    "resume",
    "rollback",
]
