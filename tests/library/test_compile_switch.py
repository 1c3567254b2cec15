"""`[library] compile = true`: background compiles switch kernels at recorded boundaries."""

from __future__ import annotations

import tomllib
from pathlib import Path

from esper_es.config import RunConfig, config_from_dict
from esper_es.core import events as ev
from esper_es.library.compiler import is_compiled
from esper_es.nn.kernels import Kernel
from esper_es.replay import replay, resume
from esper_es.store.database import RunDatabase
from esper_es.store.verify import verify
from esper_es.trainer import Trainer, built_in_trainer

QUICK = (Path(__file__).resolve().parents[1] / "fixtures" / "quick_run.toml").read_text("utf-8")
# lora compiles in well under a second, so the switch happens within the run.
QUICK += '\n[seeds]\nblueprints = ["lora"]\n'


def _config(compile_: bool) -> RunConfig:
    text = QUICK + f"\n[library]\ncompile = {'true' if compile_ else 'false'}\n"
    return config_from_dict(tomllib.loads(text))


def _kernels(t: Trainer) -> dict[str, Kernel]:
    out = {}
    for layer in t.layers.values():
        for i, seed in enumerate(layer.seed_ids()):
            kernel = layer.kernel(i)
            if isinstance(kernel, Kernel):
                out[seed] = kernel
    return out


def _compiled_events(path: Path) -> list[ev.KernelCompiled]:
    with RunDatabase.open(path, readonly=True) as db:
        found = [r.event for r in db.read(types=["KernelCompiled"])]
    assert all(isinstance(e, ev.KernelCompiled) for e in found)
    return found  # type: ignore[return-value]


class WaitForCompiles:
    """An on_step hook: checks the switch, then lets every pending compile finish.

    Waiting here (right after a boundary) makes the run independent of how fast compiling
    is: what a kernel requested at boundary S compiles before step S+1, so its
    `KernelCompiled` is due at boundary S+1.
    """

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.switched: set[tuple[str, str]] = set()

    def __call__(self, t: Trainer, step: int) -> None:
        assert t.db is not None
        recorded = {
            (e.seed, e.kernel_id)
            for e in (r.event for r in t.db.read(types=["KernelCompiled"], branch=t.bus.branch))  # type: ignore[union-attr]
            if isinstance(e, ev.KernelCompiled)
        }
        for seed, kernel in _kernels(t).items():
            key = (seed, kernel.kernel_id)
            # Switched exactly when (and once) its KernelCompiled has been projected.
            assert is_compiled(kernel) == (key in recorded), (step, key)
            if is_compiled(kernel):
                self.switched.add(key)
        if t.compiler is not None:
            t.compiler.wait(timeout=600)
        if step == self.stop_at:
            t._stop = True


def test_compile_switch_is_recorded_and_replays_bit_for_bit(tmp_path: Path) -> None:
    path = tmp_path / "compiled.db"
    hook = WaitForCompiles()
    result = built_in_trainer(_config(True), seed=0, db_path=path, on_step=hook).run()
    verify(path)
    compiled = _compiled_events(path)
    assert compiled, "a kernel compiled and switched during the run"
    assert hook.switched, "a live kernel ran its compiled form"
    with RunDatabase.open(path, readonly=True) as db:
        recs = list(db.read())
    germinated = {
        r.event.kernel_id: r.event.step for r in recs if isinstance(r.event, ev.SeedGerminated)
    }
    for e in compiled:
        assert e.backend == "inductor" and e.step > germinated[e.kernel_id]
    # The switch is a recorded seq: replay compiles there (synchronously) and reproduces every
    # checkpoint; the recomputing replay applies the recorded KernelCompiled from the log.
    assert replay(path).fingerprint == result.fingerprint
    assert replay(path, recompute_decisions=True).fingerprint == result.fingerprint


def test_compile_off_records_no_switch(tmp_path: Path) -> None:
    path = tmp_path / "eager.db"
    trainer = built_in_trainer(_config(False), seed=0, db_path=path)
    trainer.run()
    assert trainer.compiler is None
    assert _compiled_events(path) == []


def test_ctrl_c_then_resume_with_compiled_kernels(tmp_path: Path) -> None:
    path = tmp_path / "stopped.db"
    stopped = built_in_trainer(
        _config(True), seed=0, db_path=path, on_step=WaitForCompiles(stop_at=9)
    ).run()
    assert stopped.interrupted and _compiled_events(path), "switched before the stop"
    hook = WaitForCompiles()

    from esper_es.replay.session import built_in_factory

    def factory(config: RunConfig, seed: int, db_path: Path) -> Trainer:
        t = built_in_factory(config, seed, db_path)
        t.on_step = hook
        return t

    # The restore applies the KernelCompiled before the snapshot (compiling synchronously, so
    # the hook's check holds from the first boundary on); the live part compiles in the
    # background again, and its switches are new KernelCompiled facts.
    result = resume(path, trainer_factory=factory)
    assert not result.interrupted and hook.switched
    verify(path)
    assert replay(path).fingerprint == result.fingerprint
    assert replay(path, recompute_decisions=True).fingerprint == result.fingerprint
