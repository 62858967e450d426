//! TODO: plan stage (placeholder until its issue lands).
