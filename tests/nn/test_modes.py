"""nn.modes: the direct flag writes do what `Module.train` does, and restore what was there."""

from __future__ import annotations

import pytest
from torch import nn

from esper_es.nn.modes import eval_mode, modules_of, set_mode


class FrozenNorm(nn.Module):
    """A module whose `train()` keeps its norm in eval mode, as fine-tuning code often does."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(3)
        self.lin = nn.Linear(3, 3)

    def train(self, mode: bool = True) -> FrozenNorm:
        super().train(mode)
        self.norm.eval()
        return self


def _model() -> nn.Module:
    shared = nn.Linear(3, 3)
    return nn.Sequential(nn.Linear(3, 3), nn.Sequential(shared, nn.ReLU(), shared), nn.Dropout())


def test_modules_of_is_modules_in_order_each_once() -> None:
    model = _model()
    assert modules_of(model) == list(model.modules())


@pytest.mark.parametrize("training", [True, False])
def test_set_mode_matches_module_train(training: bool) -> None:
    ours, theirs = _model(), _model()
    for m in (ours, theirs):
        m[1][1].train(not training)  # a mixed start
    set_mode(ours, training)
    theirs.train(training)
    assert [m.training for m in modules_of(ours)] == [m.training for m in modules_of(theirs)]


def test_set_mode_honours_an_overridden_train() -> None:
    model = nn.Sequential(FrozenNorm(), nn.Linear(3, 3))
    set_mode(model, True)
    assert model.training and model[0].lin.training
    assert not model[0].norm.training


def test_eval_mode_restores_each_flag() -> None:
    model = nn.Sequential(FrozenNorm(), _model())
    model.train()
    model[1][2].eval()
    before = [m.training for m in modules_of(model)]
    assert True in before and False in before
    with eval_mode(model):
        assert not any(m.training for m in modules_of(model))
    assert [m.training for m in modules_of(model)] == before


def test_eval_mode_restores_on_error() -> None:
    model = _model().train()
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("inside")
    assert all(m.training for m in modules_of(model))
