"""Shared setup for the torch-side tests: one thread, so CPU results are deterministic."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
