//! One module per authentication method. Each implements [`crate::Method`]; `policy.rs` builds
//! them from the `BrokerAuthentication` documents.
