"""Optimizer calls that leave `torch._dynamo` unimported while nothing compiles (issue 12).

torch.optim imports `torch._dynamo` (about as long as `import torch` itself: sympy, mpmath and
dynamo's own modules) the first time an optimizer adds a parameter group, zeroes gradients,
saves or loads its state, or steps: those methods are wrapped in `torch._disable_dynamo`, which
imports dynamo on its first call to build the real `torch._dynamo.disable` wrapper and caches
it on the function as `__dynamo_disable`, and every built-in optimizer's `step` is wrapped in
`_use_grad_for_differentiable`, which imports dynamo to call `graph_break()` around it. Both
wrappers only do something while dynamo traces the call, and dynamo cannot be tracing anything
before it has been imported: until then, calling the wrapped function directly computes the
same thing. No supported switch avoids the import (torch 2.13: `TORCHDYNAMO_DISABLE` only makes
the wrappers do nothing once dynamo is imported; `foreach`, `fused`, `capturable` and
`differentiable` choose the update's kernels, not the wrappers).

So, with nothing compiled in the process, esper-es (a) fills the `__dynamo_disable` cache of
`torch.optim.Optimizer`'s wrapped methods with `_UntilDynamo`, which calls the method directly
while `torch._dynamo` is not in `sys.modules` and otherwise builds and caches torch's own
wrapper, exactly as torch's first call would; and (b) steps an optimizer with `step`, which runs
what torch's step wrappers run (the profiler range, the grad mode, the hooks' bookkeeping)
minus the graph breaks, and calls `optimizer.step()` as usual once dynamo is imported or when
the wrappers are not the ones it knows. `tests/runtime/test_dynamo_free.py` fails loudly when
torch's wrappers change shape, and checks that `esper-es train` does not import dynamo.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import optimizer as _optim

_DYNAMO = "torch._dynamo"
#: The attribute `torch._disable_dynamo` caches its real wrapper under.
_CACHE = "__dynamo_disable"


@functools.cache
def _code_of_disable_dynamo() -> Any:
    from torch._compile import _disable_dynamo

    return _disable_dynamo(lambda: None).__code__


@functools.cache
def _code_of_use_grad() -> Any:
    return _optim._use_grad_for_differentiable(lambda _: None).__code__


def _closure(fn: Any) -> dict[str, Any]:
    cells = fn.__closure__ or ()
    return dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in cells), strict=True))


class _UntilDynamo:
    """`torch._dynamo.disable(fn)`, built only once `torch._dynamo` has been imported."""

    def __init__(self, fn: Callable[..., Any], recursive: bool) -> None:
        self.fn = fn
        self.recursive = recursive

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _DYNAMO not in sys.modules:
            return self.fn(*args, **kwargs)
        import torch._dynamo

        real = torch._dynamo.disable(self.fn, self.recursive, wrapping=False)  # type: ignore[no-untyped-call]
        setattr(self.fn, _CACHE, real)  # what torch's own first call caches
        return real(*args, **kwargs)


def disabled_methods() -> dict[str, Callable[..., Any]]:
    """`torch.optim.Optimizer`'s methods wrapped in `torch._disable_dynamo`: name → wrapped."""
    code = _code_of_disable_dynamo()
    found = {}
    for name, attr in vars(torch.optim.Optimizer).items():
        if getattr(attr, "__code__", None) is code:
            found[name] = _closure(attr)["fn"]
    return found


def defer_dynamo_import() -> None:
    """Let optimizers run without importing `torch._dynamo` until something else imports it."""
    if _DYNAMO in sys.modules:
        return
    code = _code_of_disable_dynamo()
    for attr in vars(torch.optim.Optimizer).values():
        if getattr(attr, "__code__", None) is not code:
            continue
        cells = _closure(attr)
        fn = cells["fn"]
        if getattr(fn, _CACHE, None) is None:
            setattr(fn, _CACHE, _UntilDynamo(fn, bool(cells["recursive"])))


#: torch's wrapped `step` of an optimizer class → the function it wraps (None: not known here).
_UNWRAPPED: dict[Callable[..., Any], Callable[..., Any] | None] = {}


def unwrapped_step(cls: type) -> Callable[..., Any] | None:
    """`cls.step` without torch's two wrappers, or None if they are not the ones known here."""
    hooked = getattr(cls, "step", None)
    if not getattr(hooked, "hooked", False):
        return None  # no optimizer of this class was built yet
    assert hooked is not None
    if hooked not in _UNWRAPPED:
        use_grad = getattr(hooked, "__wrapped__", None)
        raw = getattr(use_grad, "__wrapped__", None)
        known = getattr(use_grad, "__code__", None) is _code_of_use_grad() and callable(raw)
        _UNWRAPPED[hooked] = raw if known else None
    return _UNWRAPPED[hooked]


def _hooked(optimizer: torch.optim.Optimizer) -> bool:
    return bool(
        optimizer._optimizer_step_pre_hooks
        or optimizer._optimizer_step_post_hooks
        or _optim._global_optimizer_pre_hooks
        or _optim._global_optimizer_post_hooks
    )


def step(optimizer: torch.optim.Optimizer) -> None:
    """`optimizer.step()`, without importing `torch._dynamo` while nothing has imported it."""
    raw = None if _DYNAMO in sys.modules or _hooked(optimizer) else unwrapped_step(type(optimizer))
    if raw is None:
        optimizer.step()
        return
    # What `Optimizer.profile_hook_step` and `_use_grad_for_differentiable` run around it.
    with torch.autograd.profiler.record_function(f"Optimizer.step#{type(optimizer).__name__}.step"):
        with torch.set_grad_enabled(bool(optimizer.defaults["differentiable"])):
            raw(optimizer)
        optimizer._optimizer_step_code()
