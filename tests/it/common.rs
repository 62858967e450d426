//! Helpers shared by the integration tests: the built binary, temp dirs, path redaction.

#![allow(dead_code)]

use std::path::PathBuf;

/// The `imcast` binary cargo built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_imcast"))
}

/// The repository root (where Cargo.toml is).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
