//! Handlers for resource requests: decode, call [`Objects`], encode (JSON, Table, List,
//! watch stream). Kept thin: the rules live in `objects` and `registry`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};

use super::error::ApiError;
use super::request::{Query, ResourcePath};
use super::AppState;
use crate::objects::{
    now, DeleteOptions, FieldValidation, ListOptions, ObjectError, PatchType, Target, WatchFilter,
    WatchItem, WriteOptions, Written,
};
use crate::registry::{finalize_namespace, scale, ResourceType};
use crate::selectors::{FieldSelector, Selector};
use crate::store::{Revision, StoreError};

const JSON: &str = "application/json";
const TABLE_CONTENT_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(30);
/// kube-apiserver's `--min-request-timeout`: a watch without a timeout lasts between this
/// and twice this.
const MIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(1800);

/// How the client wants objects back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Object,
    Table { include: IncludeObject },
    Metadata,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IncludeObject {
    None,
    Metadata,
    Object,
}

fn output(headers: &HeaderMap, query: &Query) -> Output {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // The first acceptable media type wins, as in Kubernetes' negotiation.
    for part in accept.split(',') {
        let p = part.replace(' ', "");
        if p.contains("as=Table") && p.contains("g=meta.k8s.io") {
            let include = match query.get("includeObject") {
                Some("None") => IncludeObject::None,
                Some("Object") => IncludeObject::Object,
                _ => IncludeObject::Metadata,
            };
            return Output::Table { include };
        }
        if p.contains("as=PartialObjectMetadata") {
            return Output::Metadata;
        }
        if p.starts_with("application/json")
            || p.starts_with("*/*")
            || p.starts_with("application/yaml")
            || p.starts_with("application/vnd.kubernetes.protobuf")
        {
            return Output::Object;
        }
    }
    Output::Object
}

fn json_response(
    code: StatusCode,
    content_type: &str,
    body: impl Into<Body>,
    warnings: &[String],
) -> Response {
    let mut resp = Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, content_type)
        .body(body.into())
        .expect("valid response");
    for w in capped_warnings(warnings) {
        let text = format!("299 - {}", serde_json::to_string(&w).unwrap_or_default());
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

/// kube-apiserver's limits on `Warning` headers: 4096 characters of text in all; past
/// that, each warning is cut to 256 characters and those that still do not fit are
/// dropped. Duplicates are sent once. Skiff also sends at most 50, so that clients that
/// refuse more than 100 headers in a response (Python's http.client) still read it.
fn capped_warnings(warnings: &[String]) -> Vec<String> {
    const TOTAL: usize = 4 * 1024;
    const ITEM: usize = 256;
    const COUNT: usize = 50;
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<&String> = warnings
        .iter()
        .filter(|w| !w.is_empty() && seen.insert(w.as_str()))
        .collect();
    let total: usize = unique.iter().map(|w| w.chars().count()).sum();
    if total <= TOTAL && unique.len() <= COUNT {
        return unique.into_iter().cloned().collect();
    }
    let mut out = Vec::new();
    let mut written = 0;
    for w in unique {
        if written >= TOTAL || out.len() >= COUNT {
            break;
        }
        let cut: String = w.chars().take(ITEM).collect();
        written += cut.chars().count();
        out.push(cut);
    }
    out
}

/// Decodes a request body as JSON or YAML (protobuf is handled by the caller).
pub fn decode_body(
    headers: &HeaderMap,
    body: &[u8],
    rt: Option<&ResourceType>,
) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(JSON);
    let base = ct.split(';').next().unwrap_or("").trim();
    if body.is_empty() {
        return Err(ApiError::BadRequest("request body is empty".into()));
    }
    match base {
        "application/vnd.kubernetes.protobuf" => super::protobuf::decode(body, rt),
        b if b.contains("yaml") => {
            let text = std::str::from_utf8(body)
                .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))?;
            serde_saphyr::from_str::<Value>(text)
                .map_err(|e| ApiError::BadRequest(format!("error converting YAML to JSON: {e}")))
        }
        b if b.is_empty() || b.contains("json") => serde_json::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!("couldn't get version/kind; json parse error: {e}"))
        }),
        other => Err(ApiError::UnsupportedMediaType(other.into())),
    }
}

/// A Table of `objects` for `rt`.
fn table(
    rt: &ResourceType,
    objects: &[Value],
    include: IncludeObject,
    with_columns: bool,
    list_meta: Value,
) -> Value {
    let now = now();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({"cells": rt.strategy.cells(o, now)});
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => row["object"] = partial(o),
                IncludeObject::Object => row["object"] = o.clone(),
            }
            row
        })
        .collect();
    let columns: Vec<Value> = if with_columns {
        rt.strategy
            .columns()
            .iter()
            .map(|c| c.definition())
            .collect()
    } else {
        vec![]
    };
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "columnDefinitions": columns, "rows": rows})
}

/// An object's `PartialObjectMetadata` form.
fn partial(o: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))})
}

/// Encodes one object in the requested output.
fn single(
    rt: &ResourceType,
    raw: Bytes,
    out: Output,
    code: StatusCode,
    warnings: &[String],
) -> Result<Response, ApiError> {
    match out {
        Output::Object => Ok(json_response(code, JSON, raw, warnings)),
        Output::Table { include } => {
            let v: Value =
                serde_json::from_slice(&raw).map_err(|e| ApiError::BadRequest(e.to_string()))?;
            let rv = v
                .pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or(Value::Null);
            Ok(json_response(
                code,
                TABLE_CONTENT_TYPE,
                table(rt, &[v], include, true, json!({"resourceVersion": rv})).to_string(),
                warnings,
            ))
        }
        Output::Metadata => {
            let v: Value =
                serde_json::from_slice(&raw).map_err(|e| ApiError::BadRequest(e.to_string()))?;
            Ok(json_response(code, JSON, partial(&v).to_string(), warnings))
        }
    }
}

/// `201` with a success `Status`: what subresource actions (binding, eviction) answer.
fn created_status() -> Response {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
    json_response(StatusCode::CREATED, JSON, status.to_string(), &[])
}

/// The response to a write: 201 when it created the object, 200 otherwise.
fn written(rt: &ResourceType, w: Written, out: Output) -> Result<Response, ApiError> {
    let code = if w.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    single(rt, w.object, out, code, &w.warnings)
}

fn write_options(q: &Query) -> Result<WriteOptions, ApiError> {
    let validation = match q.get("fieldValidation") {
        None | Some("Warn") => FieldValidation::Warn,
        Some("Strict") => FieldValidation::Strict,
        Some("Ignore") => FieldValidation::Ignore,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "fieldValidation must be one of Ignore, Warn, Strict; got {other:?}"
            )))
        }
    };
    let dry_run = match q.get("dryRun") {
        None => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "dryRun: Unsupported value: {other:?}: supported values: \"All\""
            )))
        }
    };
    Ok(WriteOptions {
        dry_run,
        field_manager: q.get("fieldManager").map(str::to_string),
        validation,
        force: q.flag("force"),
    })
}

fn list_options(rt: &ResourceType, q: &Query) -> Result<ListOptions, ApiError> {
    let labels = Selector::parse(q.get("labelSelector").unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or(""), |f| rt.field(f))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let limit = q.int("limit")?.filter(|l| *l > 0).map(|l| l as usize);
    let resource_version = match q.get("resourceVersion") {
        None => None,
        Some(rv) => Some(
            rv.parse::<Revision>()
                .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {rv:?}")))?,
        ),
    };
    let exact = match q.get("resourceVersionMatch") {
        None | Some("NotOlderThan") => false,
        Some("Exact") if resource_version.is_some_and(|r| r > 0) => true,
        Some("Exact") => return Err(ApiError::BadRequest("resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"".into())),
        Some(other) => return Err(ApiError::BadRequest(format!("resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""))),
    };
    Ok(ListOptions {
        labels,
        fields,
        limit,
        exact,
        continue_token: q.get("continue").map(str::to_string),
        resource_version,
    })
}

/// DeleteOptions from the body (JSON, YAML or protobuf, as clients send) and the query.
fn delete_options(q: &Query, headers: &HeaderMap, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let b: Value = if body.is_empty() {
        json!({})
    } else {
        decode_body(headers, body, None)?
    };
    let grace = match b.get("gracePeriodSeconds").and_then(Value::as_i64) {
        Some(g) => Some(g),
        None => q.int("gracePeriodSeconds")?,
    };
    let mut policy = b
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| q.get("propagationPolicy").map(str::to_string));
    if b.get("orphanDependents").and_then(Value::as_bool) == Some(true)
        || q.flag("orphanDependents")
    {
        policy = Some("Orphan".into());
    }
    if let Some(p) = policy.as_deref() {
        if !matches!(p, "Orphan" | "Background" | "Foreground") {
            return Err(ApiError::BadRequest(format!("propagationPolicy: Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\"")));
        }
    }
    let dry = b
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|v| v == "All"))
        || q.get("dryRun") == Some("All");
    Ok(DeleteOptions {
        grace_period_seconds: grace,
        propagation_policy: policy,
        precondition_uid: b
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        precondition_rv: b
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok()),
        dry_run: dry,
    })
}

pub async fn handle(
    state: Arc<AppState>,
    method: Method,
    path: ResourcePath,
    query: Query,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let registry = state.objects.registry();
    let rt = registry
        .find(&path.group, &path.version, &path.resource)
        .ok_or(ApiError::NoSuchPath)?;
    if !rt.namespaced && path.namespace.is_some() {
        return Err(ApiError::NoSuchPath);
    }
    let ns = path.namespace.as_deref();
    let out = output(&headers, &query);
    let objects = &state.objects;
    if let Some(sub) = path.subresource.as_deref() {
        let name = path.name.as_deref().ok_or(ApiError::NoSuchPath)?;
        if !rt.has_subresource(sub) {
            return Err(ApiError::NoSuchPath);
        }
        return subresource(&state, rt, ns, name, sub, method, &query, &headers, body).await;
    }
    let watching = path.watch_prefix || query.flag("watch");
    match (method, path.name.as_deref()) {
        (Method::GET, Some(name)) if !watching => {
            let s = objects.get(rt, ns, name).await?;
            single(rt, s.data, out, StatusCode::OK, &[])
        }
        (Method::GET, name) if watching => {
            let mut opts = list_options(rt, &query)?;
            if let Some(n) = name {
                opts.fields = FieldSelector::parse(&format!("metadata.name={n}"), |f| rt.field(f))
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            }
            watch(state.clone(), rt, ns.map(str::to_string), opts, &query, out).await
        }
        (Method::GET, None) => list(objects, rt, ns, &query, out).await,
        (Method::POST, None) => {
            if rt.namespaced && ns.is_none() {
                return Err(ApiError::MethodNotAllowed);
            }
            let input = decode_body(&headers, &body, Some(rt))?;
            check_type(rt, &input)?;
            let w = objects
                .create(rt, ns, input, &write_options(&query)?)
                .await?;
            single(rt, w.object, out, StatusCode::CREATED, &w.warnings)
        }
        (Method::PUT, Some(name)) => {
            let input = decode_body(&headers, &body, Some(rt))?;
            check_type(rt, &input)?;
            let w = objects
                .update(rt, ns, name, input, Target::Main, &write_options(&query)?)
                .await?;
            written(rt, w, out)
        }
        (Method::PATCH, Some(name)) => {
            let w = patch(objects, rt, ns, name, Target::Main, &query, &headers, &body).await?;
            written(rt, w, out)
        }
        (Method::DELETE, Some(name)) => {
            let opts = delete_options(&query, &headers, &body)?;
            let w = objects.delete(rt, ns, name, &opts).await?;
            let v: Value = serde_json::from_slice(&w.object)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            let pending = v
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|t| !t.is_null());
            if pending || rt.hooks.returns_deleted_object() {
                return single(rt, w.object, out, StatusCode::OK, &[]);
            }
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "group": rt.group, "kind": rt.plural, "uid": v.pointer("/metadata/uid")}});
            Ok(json_response(StatusCode::OK, JSON, status.to_string(), &[]))
        }
        (Method::DELETE, None) => {
            let opts = delete_options(&query, &headers, &body)?;
            let items = objects
                .delete_collection(rt, ns, &list_options(rt, &query)?, &opts)
                .await?;
            Ok(json_response(
                StatusCode::OK,
                JSON,
                list_body(rt, &items, state.objects.store().revision(), None),
                &[],
            ))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// The body must be of the resource's kind (when it says).
fn check_type(rt: &ResourceType, v: &Value) -> Result<(), ApiError> {
    if let Some(k) = v
        .get("kind")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
    {
        if k != rt.kind {
            return Err(ApiError::BadRequest(format!(
                "the kind of the object ({k}) does not match the resource kind ({})",
                rt.kind
            )));
        }
    }
    if let Some(av) = v
        .get("apiVersion")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
    {
        if av != rt.api_version() {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                rt.api_version()
            )));
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn patch(
    objects: &crate::objects::Objects,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    target: Target,
    query: &Query,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Written, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ptype = PatchType::from_content_type(ct)
        .ok_or_else(|| ApiError::UnsupportedMediaType(ct.into()))?;
    let patch = decode_body(headers, body, None)?;
    Ok(objects
        .patch(rt, ns, name, ptype, patch, target, &write_options(query)?)
        .await?)
}

fn list_body(rt: &ResourceType, items: &[Bytes], rev: Revision, cont: Option<&str>) -> Vec<u8> {
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    let head = format!(
        "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[",
        rt.kind,
        rt.api_version(),
        meta
    );
    let mut out =
        Vec::with_capacity(head.len() + items.iter().map(|i| i.len() + 1).sum::<usize>() + 2);
    out.extend_from_slice(head.as_bytes());
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.extend_from_slice(b"]}");
    out
}

async fn list(
    objects: &crate::objects::Objects,
    rt: &ResourceType,
    ns: Option<&str>,
    query: &Query,
    out: Output,
) -> Result<Response, ApiError> {
    let opts = list_options(rt, query)?;
    let page = objects.list(rt, ns, &opts).await?;
    match out {
        Output::Object => Ok(json_response(
            StatusCode::OK,
            JSON,
            list_body(rt, &page.items, page.rev, page.continue_token.as_deref()),
            &[],
        )),
        Output::Table { .. } | Output::Metadata => {
            let values: Vec<Value> = page
                .items
                .iter()
                .map(|b| serde_json::from_slice(b))
                .collect::<Result<_, _>>()
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            let mut meta = json!({"resourceVersion": page.rev.to_string()});
            if let Some(c) = &page.continue_token {
                meta["continue"] = json!(c);
            }
            if let Output::Table { include } = out {
                Ok(json_response(
                    StatusCode::OK,
                    TABLE_CONTENT_TYPE,
                    table(rt, &values, include, true, meta).to_string(),
                    &[],
                ))
            } else {
                let items: Vec<Value> = values.iter().map(partial).collect();
                let body = json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": items});
                Ok(json_response(StatusCode::OK, JSON, body.to_string(), &[]))
            }
        }
    }
}

/// One watch event line, encoded for the requested output.
fn event_line(
    rt: &ResourceType,
    kind: &str,
    object: &[u8],
    out: Output,
    first: &mut bool,
) -> Option<Bytes> {
    let mut line = Vec::with_capacity(object.len() + 32);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    match out {
        Output::Object => line.extend_from_slice(object),
        Output::Table { include } => {
            let v: Value = serde_json::from_slice(object).ok()?;
            let rv = v
                .pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or(Value::Null);
            let t = table(rt, &[v], include, *first, json!({"resourceVersion": rv}));
            *first = false;
            line.extend_from_slice(t.to_string().as_bytes());
        }
        Output::Metadata => {
            let v: Value = serde_json::from_slice(object).ok()?;
            line.extend_from_slice(partial(&v).to_string().as_bytes());
        }
    }
    line.extend_from_slice(b"}\n");
    Some(line.into())
}

fn bookmark(rt: &ResourceType, rev: Revision, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let obj = json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta});
    format!("{}\n", json!({"type": "BOOKMARK", "object": obj})).into()
}

fn error_line(e: ApiError) -> Bytes {
    let (_, status) = e.status();
    format!("{}\n", json!({"type": "ERROR", "object": status})).into()
}

async fn watch(
    state: Arc<AppState>,
    rt: &'static ResourceType,
    ns: Option<String>,
    opts: ListOptions,
    query: &Query,
    out: Output,
) -> Result<Response, ApiError> {
    let objects = &state.objects;
    let bookmarks = query.flag("allowWatchBookmarks");
    // As kube-apiserver: every watch ends. Without `timeoutSeconds` (or with 0) after a
    // random 30 to 60 minutes, so that clients spread their re-watches; a negative one
    // ends it at once.
    let timeout = match query.int("timeoutSeconds")? {
        Some(t) if t != 0 => Duration::from_secs(t.max(0) as u64),
        _ => {
            use rand::Rng;
            MIN_REQUEST_TIMEOUT.mul_f64(1.0 + rand::rng().random::<f64>())
        }
    };
    let send_initial = query
        .get("sendInitialEvents")
        .map(|_| query.flag("sendInitialEvents"));
    // Without a resourceVersion (or with "0"), a watch starts with the current state.
    let (initial, from) = match (opts.resource_version, send_initial) {
        (Some(rv), Some(false) | None) if rv > 0 => (Vec::new(), rv),
        _ => {
            let page = objects
                .list(
                    rt,
                    ns.as_deref(),
                    &ListOptions {
                        limit: None,
                        continue_token: None,
                        resource_version: None,
                        ..opts.clone()
                    },
                )
                .await?;
            (page.items, page.rev)
        }
    };
    let filter = WatchFilter {
        labels: opts.labels.clone(),
        fields: opts.fields.clone(),
        exact_key: None,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let mut stream = match objects.watch(rt, ns.as_deref(), from, filter) {
        Ok(s) => Some(s),
        Err(e) => {
            // An expired resourceVersion is reported in the stream, as Kubernetes does.
            let _ = tx.try_send(error_line(e.into()));
            None
        }
    };
    let rt_static = rt;
    tokio::spawn(async move {
        let mut first = true;
        for item in initial {
            let Some(line) = event_line(rt_static, "ADDED", &item, out, &mut first) else {
                continue;
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if send_initial == Some(true) && tx.send(bookmark(rt_static, from, true)).await.is_err() {
            return;
        }
        let Some(stream) = stream.as_mut() else {
            return;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = from;
        let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
        ticker.tick().await;
        loop {
            tokio::select! {
                item = stream.next() => match item {
                    Some(WatchItem::Event {
                        kind, object, rev, ..
                    }) => {
                        last = rev;
                        let Some(line) = event_line(rt_static, kind, &object, out, &mut first) else { continue };
                        if tx.send(line).await.is_err() { return; }
                    }
                    Some(WatchItem::Error(e)) => { let _ = tx.send(error_line(e.into())).await; return; }
                    None => return,
                },
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(bookmark(rt_static, last, false)).await.is_err() { return; }
                }
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
            }
        }
    });
    let body = Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>),
    );
    let ct = if matches!(out, Output::Table { .. }) {
        TABLE_CONTENT_TYPE
    } else {
        JSON
    };
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, ct)
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .expect("valid response"))
}

/// A replace or patch of a scalable object's `Scale` view (`autoscaling/v1`): the change
/// is made to the view, then to the object's replicas; the answer is the new view.
async fn update_scale(
    objects: &crate::objects::Objects,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let input = decode_body(headers, body, None)?;
    let ptype = PatchType::from_content_type(&ct);
    let is_put = ct.is_empty() || ptype.is_none();
    let w = objects
        .update_with(
            rt,
            ns,
            name,
            Target::Main,
            &WriteOptions::default(),
            |old| {
                let current = scale::scale_of(rt, old);
                let wanted = if is_put {
                    Ok(input.clone())
                } else {
                    match ptype {
                        Some(PatchType::Json) => {
                            crate::objects::patch::json_patch(&current, &input)
                        }
                        Some(PatchType::Merge) | Some(PatchType::Apply) => {
                            crate::objects::patch::merge_patch(&current, &input)
                        }
                        _ => crate::objects::patch::strategic_merge("Scale", &current, &input),
                    }
                };
                let wanted = wanted.map_err(|e| ObjectError::PatchFailed(e.to_string()))?;
                scale::apply_scale(old, &wanted).map_err(|errs| ObjectError::Invalid {
                    kind: "Scale".into(),
                    group: "autoscaling".into(),
                    name: name.into(),
                    errors: errs.0,
                })
            },
        )
        .await?;
    let obj: Value = serde_json::from_slice(&w.object)
        .map_err(|e| ObjectError::Store(StoreError::Corrupt(e.to_string())))?;
    let scale = scale::scale_of(rt, &obj);
    Ok(json_response(StatusCode::OK, JSON, scale.to_string(), &[]))
}

use tokio_stream::StreamExt as _;

#[allow(clippy::too_many_arguments)]
async fn subresource(
    state: &Arc<AppState>,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    sub: &str,
    method: Method,
    query: &Query,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let objects = &state.objects;
    let out = output(headers, query);
    match (sub, method) {
        ("status", Method::GET) => {
            let s = objects.get(rt, ns, name).await?;
            single(rt, s.data, out, StatusCode::OK, &[])
        }
        ("status", Method::PUT) => {
            let input = decode_body(headers, &body, Some(rt))?;
            let w = objects
                .update(rt, ns, name, input, Target::Status, &write_options(query)?)
                .await?;
            single(rt, w.object, out, StatusCode::OK, &w.warnings)
        }
        ("status", Method::PATCH) => {
            let w = patch(objects, rt, ns, name, Target::Status, query, headers, &body).await?;
            single(rt, w.object, out, StatusCode::OK, &w.warnings)
        }
        ("scale", Method::GET) => {
            let (obj, _) = objects.get_value(rt, ns, name).await?;
            Ok(json_response(
                StatusCode::OK,
                JSON,
                scale::scale_of(rt, &obj).to_string(),
                &[],
            ))
        }
        ("scale", Method::PUT | Method::PATCH) => {
            update_scale(objects, rt, ns, name, headers, &body).await
        }
        ("binding", Method::POST) => {
            let input = decode_body(headers, &body, None)?;
            let node = input
                .pointer("/target/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if node.is_empty() {
                return Err(ApiError::Object(ObjectError::Invalid {
                    kind: "Binding".into(),
                    group: String::new(),
                    name: name.into(),
                    errors: vec![crate::registry::validation::FieldError {
                        field: "target.name".into(),
                        kind: crate::registry::validation::ErrorType::Required,
                        detail: String::new(),
                    }],
                }));
            }
            objects
                .bind_pod(ns.unwrap_or("default"), name, node)
                .await?;
            Ok(created_status())
        }
        ("eviction", Method::POST) => {
            objects
                .delete(rt, ns, name, &DeleteOptions::default())
                .await?;
            Ok(created_status())
        }
        ("finalize", Method::PUT) => {
            let input = decode_body(headers, &body, Some(rt))?;
            let finalizers = input
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let w = objects
                .update_with(
                    rt,
                    None,
                    name,
                    Target::Main,
                    &WriteOptions::default(),
                    |old| Ok(finalize_namespace(old, &finalizers)),
                )
                .await?;
            single(rt, w.object, out, StatusCode::OK, &[])
        }
        ("log", Method::GET) => {
            super::node_proxy::pod_log(
                objects,
                state.node_tls.clone(),
                ns.unwrap_or("default"),
                name,
                query,
            )
            .await
        }
        ("token", Method::POST) => {
            let input = decode_body(headers, &body, None)?;
            let answer = super::tokens::token_request(
                objects,
                &state.tokens,
                ns.unwrap_or("default"),
                name,
                &input,
            )
            .await?;
            Ok(json_response(
                StatusCode::CREATED,
                JSON,
                answer.to_string(),
                &[],
            ))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}
