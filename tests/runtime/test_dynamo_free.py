"""Optimizers without `torch._dynamo` (esper_es.runtime.dynamo_free).

The module relies on the shape of torch.optim's wrappers; these tests fail loudly when a torch
release changes it, and check in fresh processes that training imports no dynamo.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from esper_es.runtime import dynamo_free


def test_torch_optim_wraps_what_this_module_expects() -> None:
    # Every method torch wraps in `_disable_dynamo` is found (a new one torch adds is too,
    # by its wrapper's code object); these four are called on every run.
    found = dynamo_free.disabled_methods()
    assert {"add_param_group", "zero_grad", "state_dict", "load_state_dict"} <= set(found)
    for cls in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD):
        cls([nn.Parameter(torch.zeros(1))], lr=0.1)  # wraps `cls.step` with torch's hook
        raw = dynamo_free.unwrapped_step(cls)
        assert raw is not None, f"torch changed how {cls.__name__}.step is wrapped"
        assert raw.__name__ == "step"


def _train_steps(step: object, opt_cls: type, **options: object) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    opt = opt_cls(model.parameters(), lr=0.01, **options)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    for _ in range(5):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        step(opt)  # type: ignore[operator]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for i, s in enumerate(opt.state.values()):
        state.update({f"opt{i}.{k}": torch.as_tensor(v).clone() for k, v in s.items()})
    return state


@pytest.mark.parametrize(
    ("opt_cls", "options"),
    [
        (torch.optim.Adam, {"weight_decay": 1e-4}),
        (torch.optim.AdamW, {}),
        (torch.optim.SGD, {"momentum": 0.9}),
    ],
)
def test_step_is_the_same_bits_as_optimizer_step(opt_cls: type, options: dict[str, object]) -> None:
    ours = _train_steps(dynamo_free.step, opt_cls, **options)
    torchs = _train_steps(lambda o: o.step(), opt_cls, **options)
    assert ours.keys() == torchs.keys()
    for k in ours:
        assert torch.equal(ours[k], torchs[k]), k


def test_step_runs_hooks_through_torch() -> None:
    p = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.5)
    calls: list[str] = []
    opt.register_step_pre_hook(lambda *_: calls.append("pre"))
    opt.register_step_post_hook(lambda *_: calls.append("post"))
    p.grad = torch.ones(2)
    dynamo_free.step(opt)
    assert calls == ["pre", "post"]
    assert torch.equal(p.detach(), torch.full((2,), 0.5))


def _fresh(code: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], check=True, capture_output=True, text=True
    )
    out: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def test_optimizers_run_without_importing_dynamo_until_it_is_imported() -> None:
    out = _fresh("""
        import json, sys
        import torch
        from torch import nn
        from esper_es.runtime import dynamo_free
        dynamo_free.defer_dynamo_import()
        model = nn.Linear(3, 2)
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))]})
        for _ in range(2):
            opt.zero_grad()
            model(torch.ones(4, 3)).sum().backward()
            dynamo_free.step(opt)
        opt.load_state_dict(opt.state_dict())
        before = "torch._dynamo" in sys.modules
        import torch._dynamo
        opt.zero_grad()
        dynamo_free.step(opt)
        cached = type(getattr(torch.optim.Optimizer.zero_grad.__wrapped__, "__dynamo_disable"))
        print(json.dumps({"before": before, "cached": cached.__name__}))
    """)
    # Once dynamo is imported, torch's own `disable` wrapper is built and cached.
    assert out == {"before": False, "cached": "function"}


@pytest.mark.slow
def test_train_command_does_not_import_dynamo(tmp_path: object) -> None:
    out = _fresh(f"""
        import atexit, json, sys
        from esper_es.cli.main import main
        # The command leaves through its exit handlers (and `os._exit`): report from one.
        atexit.register(lambda: print(json.dumps({{"dynamo": "torch._dynamo" in sys.modules}})))
        main(["train", "--epochs", "1", "--db", "{tmp_path}/r.db"])
    """)
    assert out == {"dynamo": False}
