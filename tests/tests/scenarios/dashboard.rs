//! Placeholder: filled in by the dashboard work.
