//! Test support shared by the library's unit tests, the integration tests and the benchmark
//! examples. Not part of imcast's interface (hidden from the docs); nothing in the product
//! calls it.
//!
//! It is an ordinary module rather than one behind a cargo feature: the unit tests, the one
//! integration-test binary and the examples all need it under a plain `cargo test` / `cargo run
//! --example`, and a feature would have to be switched on for each of them.

pub mod pg;
