//! Image references as the node stores them and the scheduler compares them.

/// `name` → `name:latest` when it has neither tag nor digest, as Docker does.
pub fn normalize(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if reference.contains('@') || last.contains(':') {
        reference.to_string()
    } else {
        format!("{reference}:latest")
    }
}
