//! Field errors in Kubernetes' words, and the name/label checks every kind shares.

use std::collections::BTreeMap;
use std::fmt;

/// What is wrong with one field, with Kubernetes' `StatusCause` reason and message.
#[derive(Clone, Debug, PartialEq)]
pub enum ErrorType {
    Required,
    Invalid(String),
    Duplicate(String),
    NotSupported(String, Vec<String>),
    Forbidden,
    TooLong(String, usize),
    TooMany(usize, usize),
    NotFound(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub kind: ErrorType,
    pub detail: String,
}

impl FieldError {
    pub fn reason(&self) -> &'static str {
        match self.kind {
            ErrorType::Required => "FieldValueRequired",
            ErrorType::Invalid(_) => "FieldValueInvalid",
            ErrorType::Duplicate(_) => "FieldValueDuplicate",
            ErrorType::NotSupported(..) => "FieldValueNotSupported",
            ErrorType::Forbidden => "FieldValueForbidden",
            ErrorType::TooLong(..) => "FieldValueTooLong",
            ErrorType::TooMany(..) => "FieldValueTooMany",
            ErrorType::NotFound(_) => "FieldValueNotFound",
        }
    }

    /// The message without the field path, as in `StatusCause.message`.
    pub fn message(&self) -> String {
        let head = match &self.kind {
            ErrorType::Required => "Required value".to_string(),
            ErrorType::Invalid(v) => format!("Invalid value: {v}"),
            ErrorType::Duplicate(v) => format!("Duplicate value: {v}"),
            ErrorType::NotSupported(v, valid) => {
                let valid: Vec<String> = valid.iter().map(|s| format!("{s:?}")).collect();
                format!(
                    "Unsupported value: {v}: supported values: {}",
                    valid.join(", ")
                )
            }
            ErrorType::Forbidden => "Forbidden".to_string(),
            ErrorType::TooLong(_, max) => format!("Too long: may not be more than {max} bytes"),
            ErrorType::TooMany(n, max) => format!("Too many: {n}: must have at most {max} items"),
            ErrorType::NotFound(v) => format!("Not found: {v}"),
        };
        if self.detail.is_empty() || matches!(self.kind, ErrorType::NotSupported(..)) {
            head
        } else {
            format!("{head}: {}", self.detail)
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message())
    }
}

/// A value rendered as Go's `%#v` would quote it in an error message.
pub fn quote(v: &str) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Collects field errors while walking an object.
#[derive(Debug, Default)]
pub struct Errors(pub Vec<FieldError>);

impl Errors {
    pub fn push(&mut self, field: impl Into<String>, kind: ErrorType, detail: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            kind,
            detail: detail.into(),
        });
    }
    pub fn required(&mut self, field: impl Into<String>) {
        self.push(field, ErrorType::Required, "");
    }
    pub fn required_msg(&mut self, field: impl Into<String>, detail: impl Into<String>) {
        self.push(field, ErrorType::Required, detail);
    }
    pub fn invalid(
        &mut self,
        field: impl Into<String>,
        value: impl fmt::Display,
        detail: impl Into<String>,
    ) {
        self.push(field, ErrorType::Invalid(value.to_string()), detail);
    }
    pub fn invalid_str(
        &mut self,
        field: impl Into<String>,
        value: &str,
        detail: impl Into<String>,
    ) {
        self.push(field, ErrorType::Invalid(quote(value)), detail);
    }
    pub fn duplicate(&mut self, field: impl Into<String>, value: &str) {
        self.push(field, ErrorType::Duplicate(quote(value)), "");
    }
    pub fn not_found(&mut self, field: impl Into<String>, value: &str) {
        self.push(field, ErrorType::NotFound(quote(value)), "");
    }
    pub fn forbidden(&mut self, field: impl Into<String>, detail: impl Into<String>) {
        self.push(field, ErrorType::Forbidden, detail);
    }
    pub fn not_supported(&mut self, field: impl Into<String>, value: &str, valid: &[&str]) {
        self.push(
            field,
            ErrorType::NotSupported(quote(value), valid.iter().map(|s| s.to_string()).collect()),
            "",
        );
    }
    /// Checks that `value` is one of `valid` (empty counts as missing).
    pub fn one_of(
        &mut self,
        field: impl Into<String>,
        value: Option<&str>,
        valid: &[&str],
        required: bool,
    ) {
        match value {
            None | Some("") if required => self.required(field),
            None | Some("") => {}
            Some(v) if valid.contains(&v) => {}
            Some(v) => self.not_supported(field, v, valid),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;

fn is_alnum_lower(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= DNS1123_LABEL_MAX
        && is_alnum_lower(b[0])
        && is_alnum_lower(b[b.len() - 1])
        && b.iter().all(|&c| is_alnum_lower(c) || c == b'-')
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= DNS1123_SUBDOMAIN_MAX
        && !s.is_empty()
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && is_alnum_lower(b[0])
                && is_alnum_lower(b[b.len() - 1])
                && b.iter().all(|&c| is_alnum_lower(c) || c == b'-')
        })
}

pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

pub const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
pub const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
pub const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// How a kind's object names are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    Dns1123Subdomain,
    Dns1123Label,
    Dns1035Label,
    /// Any name without `/` or `%` and not `.`/`..` (events, RBAC-like kinds).
    PathSegment,
}

impl NameRule {
    pub fn check(self, name: &str) -> Option<String> {
        let (ok, msg, max) = match self {
            NameRule::Dns1123Subdomain => (
                is_dns1123_subdomain(name),
                DNS1123_SUBDOMAIN_MSG,
                DNS1123_SUBDOMAIN_MAX,
            ),
            NameRule::Dns1123Label => {
                (is_dns1123_label(name), DNS1123_LABEL_MSG, DNS1123_LABEL_MAX)
            }
            NameRule::Dns1035Label => {
                (is_dns1035_label(name), DNS1035_LABEL_MSG, DNS1123_LABEL_MAX)
            }
            NameRule::PathSegment => {
                let bad = name == "." || name == ".." || name.contains('/') || name.contains('%');
                return bad
                    .then(|| "may not be '.' or '..' and may not contain '/' or '%'".to_string());
            }
        };
        if ok {
            None
        } else if name.len() > max {
            Some(format!("must be no more than {max} characters"))
        } else {
            Some(msg.to_string())
        }
    }
}

fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
}

const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

/// Checks a label or annotation key (`[prefix/]name`).
pub fn check_qualified_name(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Some("prefix part must be non-empty".into());
        }
        if !is_dns1123_subdomain(p) {
            return Some(format!("prefix part {DNS1123_SUBDOMAIN_MSG}"));
        }
    }
    if name.is_empty() {
        return Some("name part must be non-empty".into());
    }
    if name.len() > 63 {
        return Some("name part must be no more than 63 characters".into());
    }
    if !is_qualified_name_part(name) {
        return Some(QUALIFIED_NAME_MSG.into());
    }
    None
}

pub fn check_label_value(v: &str) -> Option<String> {
    if v.is_empty() {
        return None;
    }
    if v.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    if !is_qualified_name_part(v) {
        return Some("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into());
    }
    None
}

pub fn validate_labels(labels: Option<&BTreeMap<String, String>>, path: &str, errs: &mut Errors) {
    for (k, v) in labels.into_iter().flatten() {
        if let Some(msg) = check_qualified_name(k) {
            errs.invalid_str(path, k, msg);
        }
        if let Some(msg) = check_label_value(v) {
            errs.invalid_str(format!("{path}[{k}]"), v, msg);
        }
    }
}

const TOTAL_ANNOTATION_SIZE: usize = 256 * 1024;

pub fn validate_annotations(ann: Option<&BTreeMap<String, String>>, path: &str, errs: &mut Errors) {
    let mut total = 0;
    for (k, v) in ann.into_iter().flatten() {
        if let Some(msg) = check_qualified_name(&k.to_lowercase()) {
            errs.invalid_str(path, k, msg);
        }
        total += k.len() + v.len();
    }
    if total > TOTAL_ANNOTATION_SIZE {
        errs.push(
            path,
            ErrorType::TooLong(String::new(), TOTAL_ANNOTATION_SIZE),
            "",
        );
    }
}

/// A C identifier-like environment variable name (Kubernetes allows most printable ASCII but '=').
pub fn check_env_var_name(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("a valid environment variable name must consist only of printable ASCII characters other than '='".into());
    }
    if name.bytes().all(|c| (0x20..0x7f).contains(&c) && c != b'=') {
        None
    } else {
        Some("a valid environment variable name must consist only of printable ASCII characters other than '='".into())
    }
}

/// kube-apiserver's `validatePathNoBacksteps`: no `..` element. Every path a manifest
/// gives the node is checked so (and resolved beneath its root there again).
pub fn path_no_backsteps(path: &str, field: &str, errs: &mut Errors) {
    if path.split('/').any(|part| part == "..") {
        errs.invalid_str(field, path, "must not contain '..'");
    }
}

/// `validateLocalDescendingPath`: relative, without `..` elements.
pub fn local_descending_path(path: &str, field: &str, errs: &mut Errors) {
    if path.starts_with('/') {
        errs.invalid_str(field, path, "must be a relative path");
    }
    path_no_backsteps(path, field, errs);
}

/// `ValidateLocalNonReservedPath`: a descending path that does not start with `..` either
/// (`..data` is where the kubelet keeps a projected volume's atomic writes).
pub fn local_non_reserved_path(path: &str, field: &str, errs: &mut Errors) {
    local_descending_path(path, field, errs);
    if path.starts_with("..") && !path.starts_with("../") {
        errs.invalid_str(field, path, "must not start with '..'");
    }
}

/// A file mode (`defaultMode`, `items[].mode`): `0` to `0777`.
pub fn file_mode(mode: Option<i32>, field: &str, errs: &mut Errors) {
    if let Some(m) = mode.filter(|m| !(0..=0o777).contains(m)) {
        errs.invalid(
            field,
            m,
            "must be a number between 0 and 0777 (octal), both inclusive",
        );
    }
}

/// kube's IsValidIP message.
pub const INVALID_IP_MSG: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";

/// An address given where kube checks IsValidIP.
pub fn valid_ip(value: &str, field: &str, errs: &mut Errors) -> Option<std::net::IpAddr> {
    let ip = value.parse().ok();
    if ip.is_none() {
        errs.invalid_str(field, value, INVALID_IP_MSG);
    }
    ip
}

/// kube's ValidateNonSpecialIP, for addresses that receive traffic (Endpoints,
/// EndpointSlices, external IPs): unspecified and loopback addresses make no sense there,
/// and link-local ones belong to the node (a cloud's metadata service).
pub fn non_special_ip(ip: std::net::IpAddr, value: &str, field: &str, errs: &mut Errors) {
    use std::net::IpAddr;
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    let link_local_multicast = match ip {
        IpAddr::V4(v4) => v4.octets()[..3] == [224, 0, 0],
        IpAddr::V6(v6) => (v6.segments()[0] & 0xff0f) == 0xff02,
    };
    if ip.is_unspecified() {
        errs.invalid_str(field, value, format!("may not be unspecified ({value})"));
    }
    if ip.is_loopback() {
        errs.invalid_str(
            field,
            value,
            "may not be in the loopback range (127.0.0.0/8, ::1/128)",
        );
    }
    if link_local {
        errs.invalid_str(
            field,
            value,
            "may not be in the link-local range (169.254.0.0/16, fe80::/10)",
        );
    }
    if link_local_multicast {
        errs.invalid_str(
            field,
            value,
            "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)",
        );
    }
}

pub fn check_port(port: i32) -> Option<&'static str> {
    (!(1..=65535).contains(&port)).then_some("must be between 1 and 65535, inclusive")
}

pub fn check_port_name(name: &str) -> Option<String> {
    if name.len() > 15 {
        return Some("must be no more than 15 characters".into());
    }
    let b = name.as_bytes();
    if !b
        .iter()
        .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        return Some(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into(),
        );
    }
    if !b.iter().any(|c| c.is_ascii_lowercase()) {
        return Some("must contain at least one letter (a-z)".into());
    }
    if name.contains("--") {
        return Some("must not contain consecutive hyphens".into());
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some("must not begin or end with a hyphen".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(is_dns1123_label("web-1"));
        assert!(!is_dns1123_label("Web"));
        assert!(!is_dns1123_label("-a"));
        assert!(is_dns1123_subdomain("a.b-c.d"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(!is_dns1035_label("1abc"));
    }

    #[test]
    fn qualified_names() {
        assert!(check_qualified_name("app.kubernetes.io/name").is_none());
        assert!(check_qualified_name("app").is_none());
        assert!(check_qualified_name("/x").is_some());
        assert!(check_qualified_name("a/b/c").is_some());
        assert!(check_label_value("bad value").is_some());
        assert!(check_label_value("").is_none());
    }

    #[test]
    fn messages_read_like_kubernetes() {
        let mut e = Errors::default();
        e.not_supported(
            "spec.restartPolicy",
            "Sometimes",
            &["Always", "OnFailure", "Never"],
        );
        assert_eq!(
            e.0[0].to_string(),
            "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\""
        );
        e.required("spec.containers");
        assert_eq!(e.0[1].to_string(), "spec.containers: Required value");
    }
}
