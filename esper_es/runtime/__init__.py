"""Determinism groundwork (SPEC §5): environment capture and checks, seeds and RNG, datasets."""

from esper_es.core.ids import derive_seed
from esper_es.runtime.data import (
    CharVocabulary,
    DigitsSplit,
    TextTask,
    batches,
    builtin_docs_text,
    dataset_fingerprint,
    load_digits_split,
    load_digits_tensors,
    load_text_task,
    num_batches,
)
from esper_es.runtime.environment import (
    RECORDED_ONLY,
    InteropThreadsLocked,
    apply_settings,
    capture_environment,
    check_environment,
    compare_environments,
    configure_determinism,
    pin_threads,
)
from esper_es.runtime.rng import (
    capture_rng_state,
    data_order,
    decode_rng_state,
    encode_rng_state,
    generator,
    restore_rng_state,
    rng_digest,
)

__all__ = [
    "RECORDED_ONLY",
    "CharVocabulary",
    "DigitsSplit",
    "InteropThreadsLocked",
    "TextTask",
    "apply_settings",
    "batches",
    "builtin_docs_text",
    "capture_environment",
    "capture_rng_state",
    "check_environment",
    "compare_environments",
    "configure_determinism",
    "data_order",
    "dataset_fingerprint",
    "decode_rng_state",
    "derive_seed",
    "encode_rng_state",
    "generator",
    "load_digits_split",
    "load_digits_tensors",
    "load_text_task",
    "num_batches",
    "pin_threads",
    "restore_rng_state",
    "rng_digest",
]
