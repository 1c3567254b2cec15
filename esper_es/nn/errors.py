"""Typed errors of the torch side; each names what a user needs to fix it (SPEC §8 exit codes)."""

from __future__ import annotations

from collections.abc import Iterable

from esper_es.errors import EXIT_USAGE, EXIT_VERIFY, EsperError


class UnknownModulePath(EsperError):
    """A seed layer was asked for at a module path the host does not have."""

    exit_code = EXIT_USAGE

    def __init__(self, path: str, close: Iterable[str], available: Iterable[str]) -> None:
        self.path = path
        self.close = tuple(close)
        self.available = tuple(available)
        hint = (
            f"did you mean: {', '.join(self.close)}?"
            if self.close
            else f"available: {', '.join(self.available) or '(none)'}"
        )
        super().__init__(f"the host has no module at path {path!r}; {hint}")


class ShapeNotFitting(EsperError):
    """A seed layer's activation has a shape no (requested) blueprint fits."""

    exit_code = EXIT_USAGE

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot place a seed layer after {path!r}: {reason}")


class KernelMismatch(EsperError):
    """A germination event names a kernel id that the kernel it describes does not have."""

    exit_code = EXIT_VERIFY

    def __init__(self, seed: str, recorded: str, computed: str) -> None:
        self.seed = seed
        self.recorded = recorded
        self.computed = computed
        super().__init__(
            f"seed {seed}: event records kernel {recorded}, but its blueprint, config, shape "
            f"and init seed give {computed} (a different blueprint version or defaults?); "
            "register the kernel's spec with the projector (kernel_specs=...) or pass "
            "strict_kernel_ids=False"
        )


class ProjectionError(EsperError):
    """Events reached the projector out of order (a gap) or do not fit the live model."""

    exit_code = EXIT_VERIFY

    def __init__(self, seq: int, reason: str) -> None:
        self.seq = seq
        self.reason = reason
        super().__init__(f"cannot project seq {seq}: {reason}")
