//! kube-apiserver's max-in-flight filter: at most so many requests are served at once,
//! mutating and read-only ones counted apart; a request past the limit is refused at once
//! with 429 and `Retry-After`, so a flood waits in its clients, not in the server's
//! memory. Long-running requests (watches, logs, exec, attach, port-forward, proxy) hold
//! no slot: they would hold it for hours.

use std::sync::Arc;

use axum::http::Method;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The max-in-flight limit of a request's kind is reached (kube's 429).
#[derive(Debug, thiserror::Error)]
#[error("too many requests in flight")]
pub struct Saturated;

/// kube-apiserver's defaults (`--max-requests-inflight`, `--max-mutating-requests-inflight`).
pub const DEFAULT_MAX_REQUESTS_INFLIGHT: usize = 400;
pub const DEFAULT_MAX_MUTATING_REQUESTS_INFLIGHT: usize = 200;

/// Subresources whose requests run as long as their streams (kube's long-running check).
const LONG_RUNNING_SUBRESOURCES: &[&str] = &["exec", "attach", "portforward", "proxy", "log"];

pub struct InFlight {
    read_only: Arc<Semaphore>,
    mutating: Arc<Semaphore>,
}

impl InFlight {
    pub fn new(read_only: usize, mutating: usize) -> InFlight {
        InFlight {
            read_only: Arc::new(Semaphore::new(read_only)),
            mutating: Arc::new(Semaphore::new(mutating)),
        }
    }

    /// A slot for the request, `Ok(None)` if it needs none (long-running), `Err` if the
    /// limit of its kind is reached.
    pub fn admit(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
    ) -> Result<Option<OwnedSemaphorePermit>, Saturated> {
        if is_long_running(method, path, query) {
            return Ok(None);
        }
        let pool = match *method {
            Method::GET | Method::HEAD | Method::OPTIONS => &self.read_only,
            _ => &self.mutating,
        };
        pool.clone()
            .try_acquire_owned()
            .map(Some)
            .map_err(|_| Saturated)
    }
}

/// Watches (`?watch=true`, `/watch/` paths: reads only, a write with `?watch=true` is a
/// write) and streaming subresources (SPDY's exec and attach are POSTs).
fn is_long_running(method: &Method, path: &str, query: Option<&str>) -> bool {
    let read = *method == Method::GET;
    let watch = read
        && query.is_some_and(|q| {
            q.split('&')
                .any(|kv| matches!(kv, "watch=true" | "watch=1" | "watch=True"))
        });
    let s: Vec<&str> = path.trim_matches('/').split('/').collect();
    // Where the verb `watch` and a subresource sit: /api/v1/… or /apis/GROUP/VERSION/….
    let base = match s.first() {
        Some(&"api") => 2,
        Some(&"apis") => 3,
        _ => return watch,
    };
    let watch = watch || (read && s.get(base) == Some(&"watch"));
    let namespaced = s.get(base) == Some(&"namespaces") && s.len() > base + 2;
    let sub = if namespaced { base + 4 } else { base + 2 };
    watch
        || s.get(sub)
            .is_some_and(|x| LONG_RUNNING_SUBRESOURCES.contains(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_running_requests_hold_no_slot_and_the_rest_are_capped_by_kind() {
        let f = InFlight::new(1, 1);
        let get = f.admit(&Method::GET, "/api/v1/pods", None).unwrap();
        assert!(get.is_some());
        assert!(f.admit(&Method::GET, "/api/v1/nodes", None).is_err());
        // Writes have slots of their own.
        let post = f.admit(&Method::POST, "/api/v1/namespaces/a/pods", None);
        assert!(post.unwrap().is_some());
        // Watches, logs and exec pass whatever is in flight.
        for (path, query) in [
            ("/api/v1/pods", Some("watch=true&resourceVersion=1")),
            ("/api/v1/watch/pods", None),
            ("/apis/apps/v1/watch/namespaces/a/deployments", None),
            ("/api/v1/namespaces/a/pods/p/log", Some("follow=true")),
            ("/api/v1/namespaces/a/pods/p/exec", Some("command=sh")),
            ("/api/v1/nodes/n1/proxy/metrics", None),
        ] {
            assert!(
                f.admit(&Method::GET, path, query).unwrap().is_none(),
                "{path}"
            );
        }
        // A write is a write, whatever its query says.
        let _post = f.admit(&Method::POST, "/api/v1/namespaces/a/configmaps", None);
        let sneaky = f.admit(
            &Method::POST,
            "/api/v1/namespaces/a/configmaps",
            Some("watch=true"),
        );
        assert!(sneaky.is_err());
        let spdy_exec = f.admit(&Method::POST, "/api/v1/namespaces/a/pods/p/exec", None);
        assert!(spdy_exec.unwrap().is_none());
        // A ConfigMap named `log` is not a log.
        for path in [
            "/api/v1/namespaces/a/configmaps/log",
            "/api/v1/namespaces/watch",
        ] {
            assert!(f.admit(&Method::GET, path, None).is_err(), "{path}");
        }
        drop(get);
        assert!(f
            .admit(&Method::GET, "/api/v1/nodes", None)
            .unwrap()
            .is_some());
    }
}
