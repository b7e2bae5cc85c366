//! Tarefa's integration scenarios, one test binary: real Redis, real scheduler and executor
//! processes, real gRPC clients. The harness lives in `tests/src/lib.rs`.

mod cli;
mod clock;
mod compose;
mod dashboard;
mod discovery;
mod django;
mod faults;
mod hostile;
mod lifecycle;
mod node;
mod polyglot;
mod reliability;
mod security;
mod spine;
mod tracing;
