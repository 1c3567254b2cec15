"""`train` writes the grown model beside the run (or to --out), loadable to the same bits."""

from __future__ import annotations

from pathlib import Path

from esper_es.errors import EXIT_ERROR, EXIT_OK


def test_train_writes_the_grown_model_beside_the_run(cli, tmp_path: Path) -> None:
    from esper_es.nn.fingerprint import model_fingerprint
    from esper_es.replay import load_model

    r = cli("train", "--db", tmp_path / "r.db", "--epochs", 1, "--json")
    assert r.code == EXIT_OK, r.err
    obj = r.json()
    assert obj["model"] == str(tmp_path / "r.pt")
    assert model_fingerprint(load_model(tmp_path / "r.pt")) == obj["fingerprint"]


def test_train_out_names_the_model_file(cli, tmp_path: Path) -> None:
    out = tmp_path / "models" / "grown.pt"
    out.parent.mkdir()
    r = cli("train", "--db", tmp_path / "r.db", "--epochs", 1, "--out", out)
    assert r.code == EXIT_OK, r.err
    assert out.is_file()
    assert not (tmp_path / "r.pt").exists()
    assert f"model: {out}" in r.out


def test_an_unwritable_out_fails_before_training(cli, tmp_path: Path) -> None:
    r = cli("train", "--db", tmp_path / "r.db", "--out", tmp_path / "no" / "m.pt", "--json")
    assert r.code == EXIT_ERROR
    assert "m.pt" in r.json()["message"]
    assert not (tmp_path / "r.db").exists()
