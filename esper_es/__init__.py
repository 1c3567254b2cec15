"""esper-es: event-sourced morphogenetic training for PyTorch."""

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "seed_everything"]


def __getattr__(name: str) -> Any:
    # Lazily: `import esper_es` must not import torch (the CLI pins numerics before it does).
    if name == "seed_everything":
        from esper_es.runtime.rng import seed_everything

        return seed_everything
    raise AttributeError(f"module 'esper_es' has no attribute {name!r}")
