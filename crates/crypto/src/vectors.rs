//! Deterministic test-vector generation (see `tests/vectors/`).
