//! TODO: audience stage (placeholder until its issue lands).
