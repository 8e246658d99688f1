//! Generated gRPC types and stubs for Gatehouse's internal contracts (`auth/v1`).
//!
//! No hand-written logic lives here. The types stop at the crate boundaries of their users:
//! `authsvc/src/grpc.rs` and the frontend's auth client convert them to domain types.

pub mod auth {
    pub mod v1 {
        tonic::include_proto!("auth.v1");
    }
}
