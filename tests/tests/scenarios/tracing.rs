//! Placeholder: filled in by the tracing work.
