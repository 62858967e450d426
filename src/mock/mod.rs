//! TODO: mock provider (placeholder).

/// Access key id the mock accepts by default.
pub const DEFAULT_ACCESS_KEY: &str = "AKLTmockaccesskey000000";
/// Secret key the mock verifies with by default (a test value, not a secret).
pub const DEFAULT_SECRET_KEY: &str = "mock-secret-key-not-a-secret";
