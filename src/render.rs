//! TODO: render stage (placeholder until its issue lands).
