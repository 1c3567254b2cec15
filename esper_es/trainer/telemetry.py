"""What the trainer measures for its driver and controller: seed probes, stats, telemetry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

from esper_es.controller import LayerTelemetry, SeedTelemetryView, Telemetry
from esper_es.core.decisions import SeedStats
from esper_es.core.lifecycle import KERNEL_STAGES
from esper_es.nn.telemetry import counterfactual_contribution, grad_norm_ratios
from esper_es.trainer.driver import relative_spread

if TYPE_CHECKING:
    from esper_es.trainer.loop import Trainer


#: How many of the last training losses the controller sees (`recent_train_losses`).
RECENT_TRAIN_LOSSES = 64


class LiveProbe:
    """The driver's measurements on the live model (`trainer.driver.SeedProbe`)."""

    def __init__(self, trainer: Trainer) -> None:
        self.t = trainer

    def improvement(self, seed: str) -> float:
        # The paired advantage (loss without vs with the seed, same batches) rather than the
        # EMA's drift since TRAINING began: late in training the drift is batch noise and the
        # host's own progress, while the paired comparison isolates what the seed adds.
        signal = self.t.seed_telemetry.signals.get(seed)
        return signal.advantage if signal is not None else 0.0

    def contribution(self, seed: str) -> float:
        t = self.t
        loss = t.own_pass.output_loss
        if loss is None:
            return counterfactual_contribution(t.model, seed, t.contribution_batch, t.neg_loss)

        def neg_output_loss(output: Tensor, batch: Any) -> float:
            return -float(loss(output, batch))

        return counterfactual_contribution(
            t.model, seed, t.contribution_batch, t.neg_loss, neg_output_loss
        )

    def instability(self, seed: str) -> float:
        window = self.t.config.driver.instability_window
        return relative_spread(list(self.t.recent_losses)[-window:])


def seed_stats(trainer: Trainer) -> dict[str, SeedStats]:
    """What the orchestrator's strategies read of each seed holding a kernel."""
    assert trainer.bus is not None
    out = {}
    for seed in trainer._touched_seed_states():
        if seed.stage in KERNEL_STAGES:
            out[seed.seed] = SeedStats(
                seed=seed.seed,
                contribution=trainer.driver.contributions.get(seed.seed),
                improvement=LiveProbe(trainer).improvement(seed.seed),
            )
    return out


def controller_telemetry(trainer: Trainer) -> Telemetry:
    """The controller's view of the trainer at this boundary."""
    assert trainer.bus is not None
    ratios = grad_norm_ratios(trainer.model)
    layers = []
    for name, layer in trainer.layers.items():
        views = []
        for seed_id in layer.seed_ids():
            s = trainer.bus.seed(seed_id)
            holds = s.stage in KERNEL_STAGES
            views.append(
                SeedTelemetryView(
                    seed=seed_id,
                    stage=s.stage.value,
                    alpha=s.alpha,
                    blueprint=s.blueprint,
                    improvement=LiveProbe(trainer).improvement(seed_id) if holds else None,
                    contribution=trainer.driver.contributions.get(seed_id) if holds else None,
                    grad_norm_ratio=ratios.get(seed_id),
                )
            )
        layers.append(
            LayerTelemetry(
                name=name,
                num_seeds=layer.num_seeds,
                seeds=tuple(views),
                blueprints=tuple(layer.blueprints),
            )
        )
    return Telemetry(
        step=trainer.step,
        epoch=trainer.epoch,
        steps_per_epoch=trainer.steps_per_epoch(),
        train_loss_history=tuple(trainer.train_loss_history[-8:]),
        val_loss_history=tuple(trainer.val_loss_history[-8:]),
        val_accuracy_history=tuple(trainer.val_accuracy_history[-8:]),
        last_decision_step=trainer.last_decision_step,
        decisions_this_epoch=trainer.decisions_this_epoch,
        recent_train_losses=tuple(trainer.recent_losses)[-RECENT_TRAIN_LOSSES:],
        layers=tuple(layers),
    )
