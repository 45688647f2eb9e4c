//! Events the agent records about pods (Pulled, Created, Started, Killing, BackOff, ...).
//! As the kubelet does, they go out in the background, at most `EVENT_QPS` a second after a
//! burst of `EVENT_BURST`, a few at a time; what exceeds that is dropped (and said so), so
//! that a burst of pod starts never queues their status writes behind their events.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::mpsc;

/// The kubelet's defaults (`eventRecordQPS`, `eventBurst`).
const EVENT_QPS: f64 = 50.0;
const EVENT_BURST: f64 = 100.0;
/// Events waiting to be sent, at most; later ones are dropped.
const QUEUE: usize = 1000;
/// Event requests in flight at once.
const IN_FLIGHT: usize = 4;

/// The pod an event is about.
#[derive(Clone, Copy, Debug)]
pub struct PodRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub resource_version: Option<&'a str>,
}

#[derive(Clone)]
pub struct Recorder {
    node: String,
    queue: mpsc::Sender<Box<Event>>,
}

/// A token bucket: `burst` tokens, refilled at `qps` a second.
struct Bucket {
    tokens: f64,
    last: tokio::time::Instant,
}

impl Bucket {
    fn take(&mut self, now: tokio::time::Instant) -> bool {
        let refill = now.duration_since(self.last).as_secs_f64() * EVENT_QPS;
        self.tokens = (self.tokens + refill).min(EVENT_BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Recorder {
    /// A recorder sending through `client`; its sender task runs until the last clone of
    /// the recorder is dropped.
    pub fn new(client: Client, node: &str) -> Self {
        let (queue, rx) = mpsc::channel::<Box<Event>>(QUEUE);
        tokio::spawn(send_all(client, rx));
        Recorder {
            node: node.to_string(),
            queue,
        }
    }

    /// Records an event about `pod` (and, if given, one of its containers), in the
    /// background: a pod's start does not wait for its events.
    pub fn pod(
        &self,
        pod: PodRef<'_>,
        container: Option<&str>,
        type_: &str,
        reason: &str,
        message: String,
    ) {
        let involved = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.name.into()),
            namespace: Some(pod.namespace.into()),
            uid: Some(pod.uid.into()),
            resource_version: pod.resource_version.map(str::to_string),
            field_path: container.map(|c| format!("spec.containers{{{c}}}")),
        };
        self.record(involved, type_, reason, message);
    }

    /// Records an event about this agent's node; like the kubelet's, it lives in
    /// `default` and names the node (its uid is the node's name).
    pub fn node(&self, type_: &str, reason: &str, message: String) {
        let involved = ObjectReference {
            kind: Some("Node".into()),
            name: Some(self.node.clone()),
            uid: Some(self.node.clone()),
            ..Default::default()
        };
        self.record(involved, type_, reason, message);
    }

    /// Records an event about a Service (the node's proxy left its rules out, say).
    pub fn service(
        &self,
        svc: &k8s_openapi::api::core::v1::Service,
        type_: &str,
        reason: &str,
        message: String,
    ) {
        let involved = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            name: svc.metadata.name.clone(),
            namespace: svc.metadata.namespace.clone(),
            uid: svc.metadata.uid.clone(),
            resource_version: svc.metadata.resource_version.clone(),
            ..Default::default()
        };
        self.record(involved, type_, reason, message);
    }

    fn record(&self, involved: ObjectReference, type_: &str, reason: &str, message: String) {
        let now = Time(jiff::Timestamp::now());
        let ev = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", involved.name.as_deref().unwrap_or_default())),
                namespace: Some(
                    involved
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                ),
                ..Default::default()
            },
            involved_object: involved,
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(type_.into()),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(self.node.clone()),
            }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.node.clone()),
            ..Default::default()
        };
        if self.queue.try_send(Box::new(ev)).is_err() {
            tracing::debug!(reason, "event queue full; event dropped");
        }
    }
}

/// Sends queued events, rate-limited, a few at a time.
async fn send_all(client: Client, rx: mpsc::Receiver<Box<Event>>) {
    let mut bucket = Bucket {
        tokens: EVENT_BURST,
        last: tokio::time::Instant::now(),
    };
    tokio_stream::wrappers::ReceiverStream::new(rx)
        .filter_map(move |ev| {
            let allowed = bucket.take(tokio::time::Instant::now());
            if !allowed {
                tracing::debug!(reason = ?ev.reason, "event rate limit reached; event dropped");
            }
            futures::future::ready(allowed.then_some(ev))
        })
        .for_each_concurrent(IN_FLIGHT, |ev| {
            let api = Api::<Event>::namespaced(
                client.clone(),
                ev.metadata.namespace.as_deref().unwrap_or("default"),
            );
            async move {
                let pp = PostParams::default();
                let send = tokio::time::timeout(Duration::from_secs(30), api.create(&pp, &ev));
                match send.await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "recording an event failed"),
                    Err(_) => tracing::debug!("recording an event timed out"),
                }
            }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let start = tokio::time::Instant::now();
        let mut b = Bucket {
            tokens: EVENT_BURST,
            last: start,
        };
        let burst = (0..200).filter(|_| b.take(start)).count();
        assert_eq!(burst, EVENT_BURST as usize);
        // One second later, EVENT_QPS more.
        let later = start + Duration::from_secs(1);
        let more = (0..200).filter(|_| b.take(later)).count();
        assert_eq!(more, EVENT_QPS as usize);
    }
}
