//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`).

use serde_json::Value;

use super::error::ApiError;
use crate::registry::ResourceType;

/// Decodes a `k8s\0`-prefixed `runtime.Unknown` envelope into the object's JSON form.
pub fn decode(_body: &[u8], _rt: Option<&ResourceType>) -> Result<Value, ApiError> {
    Err(ApiError::UnsupportedMediaType(
        "application/vnd.kubernetes.protobuf".into(),
    ))
}
