//! TODO: send stage (placeholder until its issue lands).
