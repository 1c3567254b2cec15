"""A config recorded before a key existed is read with the value that run computed with."""

from __future__ import annotations

from esper_es.config import BEFORE_THE_KEY_EXISTED, RunConfig, config_from_record


def test_keys_missing_from_an_older_config_from_record_take_their_legacy_values() -> None:
    old = RunConfig().to_dict()
    for section, key in BEFORE_THE_KEY_EXISTED:
        if key not in old[section]:
            continue
        del old[section][key]
    config = config_from_record(old)
    assert config.train.lr_schedule == "constant"
    assert config.controller.plateau_steps == 0 and not config.controller.record_outcomes
    assert config.driver.signal_pass == "separate" and config.driver.diverged_ratio == 0.0
    assert "lr_schedule" not in old["train"]  # the recorded dict is not changed


def test_a_config_recorded_with_the_keys_is_read_as_it_is() -> None:
    assert config_from_record(RunConfig().to_dict()) == RunConfig()
