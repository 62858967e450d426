//! TODO: report stage (placeholder until its issue lands).
