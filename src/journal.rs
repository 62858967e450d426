//! TODO: journal stage (placeholder until its issue lands).
