//! Placeholder: filled in by the polyglot work.
