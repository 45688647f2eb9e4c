//! Requests the API server forwards to a pod's node agent (`pods/log`), over HTTPS with
//! the API server's client certificate, streaming the agent's answer back.

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
    let mut q: Vec<(String, String)> = LOG_PARAMS
        .iter()
        .filter_map(|k| query.get(k).map(|v| (k.to_string(), v.to_string())))
        .collect();
    q.sort();
    let qs = serde_urlencoded::to_string(&q).unwrap_or_default();
    let path = format!("/containerLogs/{ns}/{name}/{c}?{qs}");
    let authority = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    let unavailable = |e: &dyn std::fmt::Display| {
        ApiError::ServiceUnavailable(format!("cannot reach the agent of node {node_name}: {e}"))
    };
    let tcp = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|e| unavailable(&e))?;
    let server_name =
        rustls::pki_types::ServerName::try_from(ip.to_string()).map_err(|e| unavailable(&e))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .map_err(|e| unavailable(&e))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| unavailable(&e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::get(path)
        .header(header::HOST, &authority)
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| unavailable(&e))?;
    let resp = send.send_request(req).await.map_err(|e| unavailable(&e))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let msg = String::from_utf8_lossy(&body).trim().to_string();
        return Err(match status {
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST => ApiError::BadRequest(msg),
            _ => ApiError::ServiceUnavailable(msg),
        });
    }
    let body = Body::new(resp.into_body().map_err(axum::Error::new));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(body)
        .expect("valid response"))
}
