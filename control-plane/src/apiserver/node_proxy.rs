//! Requests the API server forwards to a pod's node agent (`pods/log`, and the streaming
//! `pods/exec`, `attach` and `portforward`), over HTTPS with the API server's client certificate, streaming the agent's
//! answer back.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use http_body_util::{BodyExt, Empty};
use serde_json::Value;

use super::error::ApiError;
use super::request::Query;
use crate::objects::Objects;

/// The query parameters of `pods/log` the agent understands.
const LOG_PARAMS: &[&str] = &[
    "follow",
    "previous",
    "tailLines",
    "sinceSeconds",
    "sinceTime",
    "timestamps",
    "limitBytes",
];

/// The container a log request is for: the one named, or the only one.
fn container(pod: &Value, name: &str, query: &Query) -> Result<String, ApiError> {
    let names: Vec<&str> = ["/spec/containers", "/spec/initContainers"]
        .iter()
        .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    match query.get("container") {
        Some(c) if names.contains(&c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::BadRequest(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None => {
            let main: Vec<&str> = pod
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str())
                .collect();
            match main.as_slice() {
                [one] => Ok(one.to_string()),
                many => Err(ApiError::BadRequest(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    many.join(" ")
                ))),
            }
        }
    }
}

/// A node agent's HTTPS endpoint.
struct Agent {
    node: String,
    ip: String,
    authority: String,
}

impl Agent {
    /// The endpoint of node `node_name`'s agent (its InternalIP and kubelet port).
    async fn of(objects: &Objects, node_name: &str) -> Result<Agent, ApiError> {
        let nodes = objects
            .registry()
            .find("", "v1", "nodes")
            .expect("nodes are served");
        let (node, _) = objects.get_value(nodes, None, node_name).await?;
        let ip = node
            .pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
            .and_then(|a| a["address"].as_str());
        let port = node
            .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
            .and_then(Value::as_u64);
        let (Some(ip), Some(port)) = (ip, port) else {
            return Err(ApiError::ServiceUnavailable(format!(
                "node {node_name} has no agent endpoint"
            )));
        };
        let authority = if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        };
        Ok(Agent {
            node: node_name.to_string(),
            ip: ip.to_string(),
            authority,
        })
    }

    fn unavailable(&self, e: &dyn std::fmt::Display) -> ApiError {
        ApiError::ServiceUnavailable(format!("cannot reach the agent of node {}: {e}", self.node))
    }

    /// An HTTP/1.1 connection to the agent, with the API server's client certificate;
    /// `upgrades`: the connection may be taken over by a protocol upgrade.
    async fn connect(
        &self,
        tls: Arc<rustls::ClientConfig>,
        upgrades: bool,
    ) -> Result<hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>, ApiError> {
        let tcp = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| self.unavailable(&e))?;
        let _ = tcp.set_nodelay(true);
        let server_name = rustls::pki_types::ServerName::try_from(self.ip.clone())
            .map_err(|e| self.unavailable(&e))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
            .map_err(|e| self.unavailable(&e))?;
        let (send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| self.unavailable(&e))?;
        tokio::spawn(async move {
            let _ = if upgrades {
                conn.with_upgrades().await
            } else {
                conn.await
            };
        });
        Ok(send)
    }
}

/// The agent's answer to a request it refused, as the API server's error.
async fn refused(resp: hyper::Response<hyper::body::Incoming>) -> ApiError {
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let msg = String::from_utf8_lossy(&body).trim().to_string();
    match status {
        StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST => ApiError::BadRequest(msg),
        _ => ApiError::ServiceUnavailable(msg),
    }
}

/// Headers of a protocol upgrade, passed through both ways (the agent speaks the
/// streaming protocol: websocket, or SPDY).
const UPGRADE_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-accept",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
];

/// `pods/NAME/exec`, `attach` and `portforward` (websocket or SPDY): forwarded to the pod's node agent, and once the
/// agent has switched protocols, the client's connection and the agent's are joined, as
/// kube-apiserver's upgrade-aware proxy does.
pub async fn pod_stream(
    objects: &Objects,
    tls: Arc<rustls::ClientConfig>,
    ns: &str,
    name: &str,
    subresource: &str,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    let query = Query::parse(req.uri().query())?;
    let pods = objects
        .registry()
        .find("", "v1", "pods")
        .expect("pods are served");
    let (pod, _) = objects.get_value(pods, Some(ns), name).await?;
    // Port-forward reaches the pod, not one container.
    let c = if subresource == "portforward" {
        String::new()
    } else {
        container(&pod, name, &query)?
    };
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::BadRequest(format!("pod {name} does not have a host assigned")))?;
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| !v.is_empty());
    if !is_upgrade {
        return Err(ApiError::BadRequest("Upgrade request required".into()));
    }
    let agent = Agent::of(objects, node_name).await?;
    let mut send = agent.connect(tls, true).await?;
    let path = match subresource {
        "portforward" => format!(
            "/portForward/{ns}/{name}?{}",
            req.uri().query().unwrap_or_default()
        ),
        _ => format!(
            "/{subresource}/{ns}/{name}/{c}?{}",
            req.uri().query().unwrap_or_default()
        ),
    };
    let mut fwd = hyper::Request::get(path).header(header::HOST, &agent.authority);
    for h in UPGRADE_HEADERS {
        for v in req.headers().get_all(*h) {
            fwd = fwd.header(*h, v);
        }
    }
    let fwd = fwd
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| agent.unavailable(&e))?;
    let mut resp = send
        .send_request(fwd)
        .await
        .map_err(|e| agent.unavailable(&e))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(refused(resp).await);
    }
    let mut answer = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for h in UPGRADE_HEADERS {
        for v in resp.headers().get_all(*h) {
            answer = answer.header(*h, v);
        }
    }
    let agent_side = hyper::upgrade::on(&mut resp);
    let client_side = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let (Ok(client), Ok(agent)) = (client_side.await, agent_side.await) else {
            return;
        };
        let (mut client, mut agent) = (
            hyper_util::rt::TokioIo::new(client),
            hyper_util::rt::TokioIo::new(agent),
        );
        let _ = tokio::io::copy_bidirectional(&mut client, &mut agent).await;
    });
    Ok(answer.body(Body::empty()).expect("valid response"))
}

/// `GET pods/NAME/log`: the container's log from its node agent.
pub async fn pod_log(
    objects: &Objects,
    tls: Arc<rustls::ClientConfig>,
    ns: &str,
    name: &str,
    query: &Query,
) -> Result<Response, ApiError> {
    let pods = objects
        .registry()
        .find("", "v1", "pods")
        .expect("pods are served");
    let (pod, _) = objects.get_value(pods, Some(ns), name).await?;
    let c = container(&pod, name, query)?;
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let Some(node_name) = node_name else {
        return Err(ApiError::BadRequest(format!(
            "container \"{c}\" in pod \"{name}\" is waiting to start: ContainerCreating"
        )));
    };
    let mut q: Vec<(String, String)> = LOG_PARAMS
        .iter()
        .filter_map(|k| query.get(k).map(|v| (k.to_string(), v.to_string())))
        .collect();
    q.sort();
    let qs = serde_urlencoded::to_string(&q).unwrap_or_default();
    let path = format!("/containerLogs/{ns}/{name}/{c}?{qs}");
    let agent = Agent::of(objects, node_name).await?;
    let mut send = agent.connect(tls, false).await?;
    let authority = agent.authority.clone();
    let unavailable = |e: &dyn std::fmt::Display| agent.unavailable(e);
    let req = hyper::Request::get(path)
        .header(header::HOST, &authority)
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| unavailable(&e))?;
    let resp = send.send_request(req).await.map_err(|e| unavailable(&e))?;
    if !resp.status().is_success() {
        return Err(refused(resp).await);
    }
    let body = Body::new(resp.into_body().map_err(axum::Error::new));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(body)
        .expect("valid response"))
}
