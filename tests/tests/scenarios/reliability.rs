//! Never lose a task: faults injected into real processes.
