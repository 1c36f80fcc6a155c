//! The shared model and gRPC services of Gatewan, generated from `proto/gatewan/v1/*.proto`.
//!
//! This crate owns the wire schema and nothing else: no I/O, no policy.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("gatewan.v1");
}
