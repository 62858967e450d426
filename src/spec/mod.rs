//! TODO: spec stage (placeholder).
