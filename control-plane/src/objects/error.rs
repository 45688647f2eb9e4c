//! Why an object operation fails ([`ObjectError`]), in the terms of Kubernetes' `Status`
//! reasons; the API server maps each to its HTTP `Status` in one place.

use crate::registry::validation::{Errors, FieldError};
use crate::registry::ResourceType;
use crate::store::StoreError;

/// Why an object operation failed, in the terms of Kubernetes' `Status` reasons.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("{resource} \"{name}\" not found")]
    NotFound {
        resource: String,
        group: String,
        name: String,
    },
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists {
        resource: String,
        group: String,
        name: String,
    },
    #[error("Operation cannot be fulfilled on {resource} \"{name}\": {message}")]
    Conflict {
        resource: String,
        name: String,
        message: String,
    },
    #[error("{kind} \"{name}\" is invalid: {}", summary(.errors))]
    Invalid {
        kind: String,
        group: String,
        name: String,
        errors: Vec<FieldError>,
    },
    /// Server-side apply conflicts (409 with one cause per field).
    #[error("{message}")]
    ApplyConflict {
        message: String,
        causes: Vec<(String, String)>,
    },
    #[error("{0}")]
    BadRequest(String),
    /// A patch that cannot be applied to the object (422).
    #[error("{0}")]
    PatchFailed(String),
    /// kube-apiserver's `NewForbidden`: `pods "x" is forbidden: <why>`.
    #[error("{resource}{} is forbidden: {message}", quoted_name(.name))]
    Forbidden {
        resource: String,
        name: String,
        message: String,
    },
    #[error("{0}")]
    Gone(String),
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("{0}")]
    Store(StoreError),
}

/// The one place store errors become API errors: a revision the store no longer keeps is
/// Kubernetes' `410 Expired`; anything else is the server's fault (500).
impl From<StoreError> for ObjectError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Compacted { requested, oldest } => {
                ObjectError::Gone(format!("too old resource version: {requested} ({oldest})"))
            }
            e => ObjectError::Store(e),
        }
    }
}

fn quoted_name(name: &str) -> String {
    if name.is_empty() {
        String::new()
    } else {
        format!(" {name:?}")
    }
}

fn summary(errors: &[FieldError]) -> String {
    match errors {
        [one] => one.to_string(),
        many => format!(
            "[{}]",
            many.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl ObjectError {
    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        ObjectError::NotFound {
            resource: rt.qualified(),
            group: rt.group.into(),
            name: name.into(),
        }
    }

    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        ObjectError::Conflict {
            resource: rt.qualified(),
            name: name.into(),
            message: "the object has been modified; please apply your changes to the latest version and try again".into(),
        }
    }

    pub fn invalid(rt: &ResourceType, name: &str, errs: Errors) -> Self {
        ObjectError::Invalid {
            kind: rt.kind.into(),
            group: rt.group.into(),
            name: name.into(),
            errors: errs.0,
        }
    }
}
