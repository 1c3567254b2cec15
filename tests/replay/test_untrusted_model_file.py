"""A model file is untrusted input (SPEC §9): loading one never runs code from it."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from esper_es.replay import load_model
from esper_es.replay.errors import NotAModelFile


class _Payload:
    """Unpickling this runs `touch`: what a crafted `.pt` would do with weights_only=False."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))  # type: ignore[return-value]


def test_a_crafted_model_file_is_refused_without_running_its_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    crafted = tmp_path / "model.pt"
    torch.save({"format": 1, "state_dict": {}, "x": _Payload(marker)}, crafted)
    # The file really does run code when unpickled without the guard: this test could fail.
    with crafted.open("rb"):
        torch.load(crafted, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(NotAModelFile, match="refused to load it") as info:
        load_model(crafted)
    assert not marker.exists()
    assert info.value.exit_code == 2


def test_files_that_are_not_model_files_get_a_typed_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(NotAModelFile):
        load_model(text)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(NotAModelFile, match="unknown model file format"):
        load_model(other)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(NotAModelFile):
        load_model(plain)
