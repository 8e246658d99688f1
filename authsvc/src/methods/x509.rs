//! The x509 method (being written).

use serde_json::Value;

use crate::policy::{BuildContext, PolicyError};

pub fn build(
    cx: &BuildContext<'_>,
    _settings: &Value,
    field: &str,
) -> Result<Box<dyn crate::Method>, PolicyError> {
    Err(cx.error(field, "this method is not available in this build yet"))
}
