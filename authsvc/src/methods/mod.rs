//! One module per authentication method. Each implements [`crate::Method`] and exposes a
//! [`Builder`] that `policy.rs` calls with the method's settings object.

pub mod anonymous;
pub mod custom;
pub mod jwt;
pub mod sat;
pub mod x509;

use serde_json::Value;

use crate::policy::{BuildContext, PolicyError};

/// Builds one method from its settings (`Value::Null` when the entry has none); `field` is the
/// settings' path, for errors.
pub type Builder =
    fn(&BuildContext<'_>, &Value, &str) -> Result<Box<dyn crate::Method>, PolicyError>;
