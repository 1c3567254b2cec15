"""The torch side of esper-es: seed layers, kernels, blending, isolation and the projector."""

from esper_es.nn.blueprints import (
    Blueprint,
    fitting_blueprints,
    get_blueprint,
    known_blueprints,
    register_blueprint,
    unregister_blueprint,
)
from esper_es.nn.errors import KernelMismatch, ProjectionError, ShapeNotFitting, UnknownModulePath
from esper_es.nn.fingerprint import (
    architecture_manifest,
    model_fingerprint,
    optimizer_fingerprint,
    state_dict_fingerprint,
)
from esper_es.nn.hosts import CharTransformer, DigitsCNN, VectorMLP
from esper_es.nn.kernels import (
    Kernel,
    KernelSpec,
    build_kernel,
    derive_init_seed,
    kernel_id_for,
    kernel_spec,
)
from esper_es.nn.placement import (
    SeedLayers,
    SeedLayerSpec,
    find_seed_layers,
    place_seed_layers,
)
from esper_es.nn.projector import Projector
from esper_es.nn.seed_layer import SeedLayer
from esper_es.nn.telemetry import (
    SeedTelemetry,
    counterfactual_contribution,
    grad_norm_ratios,
    seed_losses,
)

__all__ = [
    "Blueprint",
    "CharTransformer",
    "DigitsCNN",
    "Kernel",
    "KernelMismatch",
    "KernelSpec",
    "ProjectionError",
    "Projector",
    "SeedLayer",
    "SeedLayerSpec",
    "SeedLayers",
    "SeedTelemetry",
    "ShapeNotFitting",
    "UnknownModulePath",
    "VectorMLP",
    "architecture_manifest",
    "build_kernel",
    "counterfactual_contribution",
    "derive_init_seed",
    "find_seed_layers",
    "fitting_blueprints",
    "get_blueprint",
    "grad_norm_ratios",
    "kernel_id_for",
    "kernel_spec",
    "known_blueprints",
    "model_fingerprint",
    "optimizer_fingerprint",
    "place_seed_layers",
    "register_blueprint",
    "seed_losses",
    "state_dict_fingerprint",
    "unregister_blueprint",
]
