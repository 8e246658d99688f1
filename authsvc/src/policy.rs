//! `BrokerAuthentication` documents → compiled [`Chain`]s (to be filled in as methods land).

use crate::chain::Chain;

/// A method entry the service does not know yet is a configuration error naming the field.
#[derive(Debug, thiserror::Error)]
#[error("BrokerAuthentication {policy:?} {field}: {reason}")]
pub struct PolicyError {
    pub policy: String,
    pub field: String,
    pub reason: String,
}

pub type Chains = std::collections::BTreeMap<String, Chain>;
