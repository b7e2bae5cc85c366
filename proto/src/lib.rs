//! Tarefa's public gRPC contract, package `tarefa.v1`, and the Rust code generated from it.
//!
//! The `.proto` file in `tarefa/v1/` is the source of truth: producers and handlers in other
//! languages generate their stubs from the same file. Generated types stay at the edges (this
//! crate, the client and the scheduler's service module); the rest of Tarefa uses domain types.

/// Generated messages and services of `tarefa.v1`.
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    missing_debug_implementations
)]
pub mod v1 {
    tonic::include_proto!("tarefa.v1");
}

/// The encoded `FileDescriptorSet` of `tarefa.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tarefa_descriptor");

pub use v1::*;
