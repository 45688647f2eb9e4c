//! What a request addresses: parsed from the path as Kubernetes' RequestInfoFactory does,
//! and the query parameters the API understands.

use std::collections::HashMap;

use super::error::ApiError;

/// A resource request: `/api/v1/namespaces/ns/pods/name/status` and the like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// The legacy `/watch/` path prefix.
    pub watch_prefix: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiPath {
    /// `/api` or `/apis`.
    Root {
        legacy: bool,
    },
    /// `/apis/<group>`.
    Group(String),
    /// `/api/v1`, `/apis/<group>/<version>`.
    GroupVersion {
        group: String,
        version: String,
    },
    Resource(ResourcePath),
}

const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

pub fn parse_path(path: &str) -> Option<ApiPath> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api"] => return Some(ApiPath::Root { legacy: true }),
        ["apis"] => return Some(ApiPath::Root { legacy: false }),
        ["apis", g] => return Some(ApiPath::Group(g.to_string())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    if rest.is_empty() {
        return Some(ApiPath::GroupVersion {
            group: group.into(),
            version: version.into(),
        });
    }
    let mut rest = rest.to_vec();
    let watch_prefix = rest.first() == Some(&"watch");
    if watch_prefix {
        rest.remove(0);
    }
    // `/namespaces/NS/RESOURCE/...` is a resource within namespace NS; the shorter
    // `/namespaces/NAME[/status|/finalize]` names the Namespace object itself, which,
    // being cluster-scoped, is in no namespace (kube's RequestInfo sets both fields).
    let mut namespace = None;
    if rest.first() == Some(&"namespaces")
        && rest.len() > 2
        && !NAMESPACE_SUBRESOURCES.contains(&rest[2])
    {
        namespace = Some(rest[1].to_string());
        rest.drain(..2);
    }
    if rest.is_empty() || rest.len() > 3 || rest.iter().any(|s| s.is_empty()) {
        return None;
    }
    let resource = rest[0].to_string();
    let name = rest.get(1).map(|s| s.to_string());
    let subresource = rest.get(2).map(|s| s.to_string());
    Some(ApiPath::Resource(ResourcePath {
        group: group.into(),
        version: version.into(),
        namespace,
        resource,
        name,
        subresource,
        watch_prefix,
    }))
}

/// Query parameters, decoded.
#[derive(Debug, Default, Clone)]
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(q: Option<&str>) -> Result<Query, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q.unwrap_or(""))
            .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?;
        // A repeated parameter counts once, with its first value, as Go's url.Values.Get.
        let mut map = HashMap::with_capacity(pairs.len());
        for (k, v) in pairs {
            map.entry(k).or_insert(v);
        }
        Ok(Query(map))
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }

    pub fn flag(&self, k: &str) -> bool {
        // Go's strconv.ParseBool, which Kubernetes uses (clients send "True" too).
        matches!(
            self.get(k),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True")
        )
    }

    pub fn int(&self, k: &str) -> Result<Option<i64>, ApiError> {
        self.get(k)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ApiError::BadRequest(format!("invalid value for {k}: {v:?}")))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(p: &str) -> ResourcePath {
        match parse_path(p) {
            Some(ApiPath::Resource(r)) => r,
            other => panic!("{p}: {other:?}"),
        }
    }

    #[test]
    fn parses_resource_paths() {
        let r = res("/api/v1/namespaces/default/pods/web/log");
        assert_eq!(
            (
                r.namespace.as_deref(),
                r.resource.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            (Some("default"), "pods", Some("web"), Some("log"))
        );
        let r = res("/apis/apps/v1/deployments");
        assert_eq!(
            (r.group.as_str(), r.namespace, r.name),
            ("apps", None, None)
        );
        let r = res("/api/v1/namespaces/kube-system");
        assert_eq!(
            (r.resource.as_str(), r.name.as_deref(), r.namespace),
            ("namespaces", Some("kube-system"), None)
        );
        let r = res("/api/v1/namespaces/x/finalize");
        assert_eq!(
            (
                r.resource.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            ("namespaces", Some("x"), Some("finalize"))
        );
        let r = res("/api/v1/namespaces/x/status");
        assert_eq!(
            (r.namespace, r.name.as_deref(), r.subresource.as_deref()),
            (None, Some("x"), Some("status"))
        );
        let r = res("/api/v1/namespaces");
        assert_eq!((r.resource.as_str(), r.name), ("namespaces", None));
        // Namespaces within a namespace: a namespace the (cluster-scoped) resource refuses.
        let r = res("/api/v1/namespaces/a/namespaces/b");
        assert_eq!(
            (
                r.namespace.as_deref(),
                r.resource.as_str(),
                r.name.as_deref()
            ),
            (Some("a"), "namespaces", Some("b"))
        );
        let r = res("/api/v1/watch/namespaces/x");
        assert_eq!((r.namespace, r.name.as_deref()), (None, Some("x")));
        assert!(res("/api/v1/watch/namespaces/a/pods").watch_prefix);
        assert_eq!(
            parse_path("/apis/apps"),
            Some(ApiPath::Group("apps".into()))
        );
        assert_eq!(
            parse_path("/api/v1"),
            Some(ApiPath::GroupVersion {
                group: "".into(),
                version: "v1".into()
            })
        );
        assert_eq!(parse_path("/foo"), None);
    }
}
