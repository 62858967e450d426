//! TODO: throttle stage (placeholder until its issue lands).
