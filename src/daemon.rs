//! TODO: daemon stage (placeholder until its issue lands).
