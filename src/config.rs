//! TODO: config stage (placeholder until its issue lands).
