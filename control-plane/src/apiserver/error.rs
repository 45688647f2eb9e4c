//! The one place errors become HTTP responses: a Kubernetes `Status` object.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::objects::ObjectError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error("Unauthorized")]
    Unauthorized,
    #[error("the server could not find the requested resource")]
    NoSuchPath,
    #[error("{0}")]
    BadRequest(String),
    #[error("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf")]
    UnsupportedMediaType(String),
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("{0}")]
    ServiceUnavailable(String),
    #[error("Request entity too large: limit is {0}")]
    TooLarge(usize),
    /// Past the max-in-flight limit: the client retries after a second.
    #[error("Too many requests, please try again later.")]
    TooManyRequests,
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Object(e.into())
    }
}

impl ApiError {
    /// The `Status` body and HTTP code.
    pub fn status(&self) -> (StatusCode, Value) {
        let (code, reason, details) = match self {
            ApiError::Object(e) => match e {
                ObjectError::NotFound {
                    resource,
                    group,
                    name,
                } => (
                    404,
                    "NotFound",
                    json!({"name": name, "group": group, "kind": kind_of(resource)}),
                ),
                ObjectError::AlreadyExists {
                    resource,
                    group,
                    name,
                } => (
                    409,
                    "AlreadyExists",
                    json!({"name": name, "group": group, "kind": kind_of(resource)}),
                ),
                ObjectError::Conflict { resource, name, .. } => (
                    409,
                    "Conflict",
                    json!({"name": name, "kind": kind_of(resource)}),
                ),
                ObjectError::Invalid {
                    kind,
                    group,
                    name,
                    errors,
                } => (
                    422,
                    "Invalid",
                    json!({"name": name, "group": group, "kind": kind, "causes": errors.iter().map(|e| json!({"reason": e.reason(), "message": e.message(), "field": e.field})).collect::<Vec<_>>()}),
                ),
                ObjectError::ApplyConflict { causes, .. } => (
                    409,
                    "Conflict",
                    json!({"causes": causes.iter().map(|(m, f)| json!({"reason": "FieldManagerConflict", "message": m, "field": f})).collect::<Vec<_>>()}),
                ),
                ObjectError::BadRequest(_) => (400, "BadRequest", Value::Null),
                ObjectError::PatchFailed(_) => (422, "Invalid", Value::Null),
                ObjectError::Forbidden { resource, name, .. } => (
                    403,
                    "Forbidden",
                    json!({"name": name, "kind": kind_of(resource)}),
                ),
                ObjectError::Gone(_) => (410, "Expired", Value::Null),
                ObjectError::MethodNotAllowed => (405, "MethodNotAllowed", Value::Null),
                ObjectError::Store(_) => (500, "InternalError", Value::Null),
            },
            ApiError::Unauthorized => (401, "Unauthorized", Value::Null),
            ApiError::NoSuchPath => (404, "NotFound", Value::Null),
            ApiError::BadRequest(_) => (400, "BadRequest", Value::Null),
            ApiError::UnsupportedMediaType(_) => (415, "UnsupportedMediaType", Value::Null),
            ApiError::MethodNotAllowed => (405, "MethodNotAllowed", Value::Null),
            ApiError::ServiceUnavailable(_) => (503, "ServiceUnavailable", Value::Null),
            ApiError::TooLarge(_) => (413, "RequestEntityTooLarge", Value::Null),
            ApiError::TooManyRequests => (429, "TooManyRequests", json!({"retryAfterSeconds": 1})),
        };
        let message = match self {
            ApiError::Object(ObjectError::Store(StoreError::Corrupt(what))) => {
                tracing::error!(error = %what, "stored data is corrupt");
                format!("Internal error occurred: {what}")
            }
            ApiError::Object(ObjectError::Store(e)) => {
                // Internal details stay in the log.
                tracing::error!(error = %e, "store failure");
                "Internal error occurred: the storage backend failed".to_string()
            }
            other => other.to_string(),
        };
        let mut status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code,
        });
        if !details.is_null() {
            status["details"] = details;
        }
        (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            status,
        )
    }
}

/// `deployments.apps` → `deployments`: `details.kind` carries the resource name.
fn kind_of(resource: &str) -> &str {
    resource.split('.').next().unwrap_or(resource)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, body) = self.status();
        let mut resp = (
            code,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        if let Some(secs) = body.pointer("/details/retryAfterSeconds") {
            if let Ok(v) = header::HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}
