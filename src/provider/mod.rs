//! TODO: provider client (placeholder).
