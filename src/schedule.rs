//! TODO: schedule stage (placeholder until its issue lands).
