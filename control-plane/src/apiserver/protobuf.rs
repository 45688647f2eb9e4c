//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), as the
//! typed clients behind `kubectl create namespace|deployment|...` send them: the magic
//! `k8s\0`, then a `runtime.Unknown` envelope whose `raw` is the object's message. The
//! object is decoded with the field table in `protobuf_schema` (generated from the
//! k8s-pb definitions) into the same JSON a JSON client would have sent.

use base64::Engine;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::protobuf_schema::ROOTS;
use crate::registry::ResourceType;

const MAGIC: &[u8] = b"k8s\0";
/// Go's zero `time.Time` (year 1), which Kubernetes encodes for unset timestamps.
const ZERO_TIME_SECONDS: i64 = -62135596800;

pub struct Msg {
    pub name: &'static str,
    pub fields: &'static [Field],
}

pub struct Field {
    pub tag: u32,
    /// The JSON name; empty for an embedded (inline) struct.
    pub json: &'static str,
    pub ty: Ty,
    pub repeated: bool,
}

pub enum Ty {
    Str,
    /// A Go `*string`: encoded only when set, so an empty string is explicit.
    OptStr,
    Bytes,
    Bool,
    /// A Go `*bool`: encoded only when set, so `false` is explicit.
    OptBool,
    I32,
    I64,
    Msg(&'static Msg),
    /// `map<string, V>`.
    MapStr(&'static Ty),
    /// Types with their own JSON form: Time, MicroTime, Duration, Quantity, IntOrString, Raw.
    Special(&'static str),
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(format!("unable to decode protobuf body: {}", msg.into()))
}

struct Reader<'a> {
    buf: &'a [u8],
}

enum Wire<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| bad("truncated varint"))?;
            self.buf = rest;
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ApiError> {
        if self.buf.len() < n {
            return Err(bad("truncated field"));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    fn field(&mut self) -> Result<Option<(u32, Wire<'a>)>, ApiError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = (key >> 3) as u32;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed64
            }
            2 => {
                let n = self.varint()? as usize;
                Wire::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed32
            }
            w => return Err(bad(format!("unsupported wire type {w}"))),
        };
        Ok(Some((tag, wire)))
    }
}

fn fields_of(raw: &[u8]) -> Result<Vec<(u32, Wire<'_>)>, ApiError> {
    let mut r = Reader { buf: raw };
    let mut out = Vec::new();
    while let Some(f) = r.field()? {
        out.push(f);
    }
    Ok(out)
}

fn utf8(b: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|_| bad("invalid UTF-8 in a string field"))
}

fn rfc3339(secs: i64, nanos: i64, micro: bool) -> Result<Value, ApiError> {
    if secs == ZERO_TIME_SECONDS && nanos == 0 {
        return Ok(Value::Null);
    }
    let ts = jiff::Timestamp::new(secs, nanos as i32).map_err(|e| bad(e.to_string()))?;
    let fmt = if micro {
        "%Y-%m-%dT%H:%M:%S%.6fZ"
    } else {
        "%Y-%m-%dT%H:%M:%SZ"
    };
    Ok(json!(ts.strftime(fmt).to_string()))
}

/// Go's `time.Duration.String()` for whole nanoseconds.
fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let mut n = ns.unsigned_abs();
    let (h, m) = (n / 3_600_000_000_000, (n / 60_000_000_000) % 60);
    n %= 60_000_000_000;
    let s = n as f64 / 1e9;
    let secs = if s.fract() == 0.0 {
        format!("{}s", s as u64)
    } else {
        format!("{s}s")
    };
    match (h, m) {
        (0, 0) => format!("{sign}{secs}"),
        (0, m) => format!("{sign}{m}m{secs}"),
        (h, m) => format!("{sign}{h}h{m}m{secs}"),
    }
}

fn special(kind: &str, raw: &[u8]) -> Result<Value, ApiError> {
    let mut ints = [0i64; 4];
    let mut strs: [Option<String>; 4] = Default::default();
    let mut bytes: Option<&[u8]> = None;
    for (tag, w) in fields_of(raw)? {
        let i = (tag as usize).min(3);
        match w {
            Wire::Varint(v) => ints[i] = v as i64,
            Wire::Bytes(b) => {
                bytes = Some(b);
                strs[i] = String::from_utf8(b.to_vec()).ok();
            }
            _ => {}
        }
    }
    Ok(match kind {
        "Time" => rfc3339(ints[1], ints[2], false)?,
        "MicroTime" => rfc3339(ints[1], ints[2], true)?,
        "Duration" => json!(go_duration(ints[1])),
        "Quantity" => json!(strs[1].clone().unwrap_or_default()),
        "IntOrString" => {
            if ints[1] == 1 {
                json!(strs[3].clone().unwrap_or_default())
            } else {
                json!(ints[2] as i32)
            }
        }
        "Raw" => match bytes {
            Some(b) if !b.is_empty() => {
                serde_json::from_slice(b).map_err(|e| bad(format!("embedded object: {e}")))?
            }
            _ => Value::Null,
        },
        other => return Err(bad(format!("unknown special type {other}"))),
    })
}

fn scalar(ty: &Ty, w: &Wire<'_>) -> Result<Option<Value>, ApiError> {
    Ok(match (ty, w) {
        (Ty::Str | Ty::OptStr, Wire::Bytes(b)) => Some(json!(utf8(b)?)),
        (Ty::Bytes, Wire::Bytes(b)) => {
            Some(json!(base64::engine::general_purpose::STANDARD.encode(b)))
        }
        (Ty::Bool | Ty::OptBool, Wire::Varint(v)) => Some(json!(*v != 0)),
        (Ty::I32, Wire::Varint(v)) => Some(json!(*v as i64 as i32)),
        (Ty::I64, Wire::Varint(v)) => Some(json!(*v as i64)),
        (Ty::Msg(m), Wire::Bytes(b)) => Some(Value::Object(message(m, b)?)),
        (Ty::Special(k), Wire::Bytes(b)) => Some(special(k, b)?),
        _ => None,
    })
}

/// Whether a value of type `ty` is what Go's JSON encoder would omit (`omitempty` of
/// empty strings, false and unset times): Go's protobuf encoder writes every non-pointer
/// scalar, zero or not. A pointer's false or "" was set on purpose and is kept.
fn omitted(ty: &Ty, v: &Value) -> bool {
    match ty {
        Ty::OptBool | Ty::OptStr => false,
        _ => matches!(v, Value::Null | Value::Bool(false)) || v.as_str() == Some(""),
    }
}

fn message(m: &Msg, raw: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    for (tag, w) in fields_of(raw)? {
        let Some(f) = m.fields.iter().find(|f| f.tag == tag) else {
            // Unknown fields are only tolerated when empty.
            match w {
                Wire::Varint(0) => continue,
                Wire::Bytes(&[]) => continue,
                _ => return Err(bad(format!("unknown field {tag} in {}", m.name))),
            }
        };
        if let Ty::MapStr(vt) = &f.ty {
            let Wire::Bytes(entry) = w else {
                return Err(bad(format!("{}.{}: bad map entry", m.name, f.json)));
            };
            let (mut k, mut v) = (String::new(), None);
            for (etag, ew) in fields_of(entry)? {
                match (etag, &ew) {
                    (1, Wire::Bytes(b)) => k = utf8(b)?,
                    (2, _) => v = scalar(vt, &ew)?,
                    _ => {}
                }
            }
            let map = out.entry(f.json).or_insert_with(|| json!({}));
            map[&k] = v.unwrap_or(json!(""));
            continue;
        }
        // Packed repeated scalars arrive as one length-delimited run.
        if let (true, Ty::I32 | Ty::I64 | Ty::Bool | Ty::OptBool, Wire::Bytes(b)) =
            (f.repeated, &f.ty, &w)
        {
            let mut r = Reader { buf: b };
            let arr = out.entry(f.json).or_insert_with(|| json!([]));
            while !r.buf.is_empty() {
                let v = r.varint()?;
                if let Some(x) = scalar(&f.ty, &Wire::Varint(v))? {
                    arr.as_array_mut().expect("array").push(x);
                }
            }
            continue;
        }
        let v = scalar(&f.ty, &w)?
            .ok_or_else(|| bad(format!("{}.{}: wrong wire type", m.name, f.json)))?;
        if f.json.is_empty() {
            // An embedded struct: its fields belong to this object.
            if let Value::Object(inner) = v {
                out.extend(inner);
            }
        } else if f.repeated {
            out.entry(f.json)
                .or_insert_with(|| json!([]))
                .as_array_mut()
                .expect("array")
                .push(v);
        } else if !omitted(&f.ty, &v) {
            out.insert(f.json.to_string(), v);
        }
    }
    Ok(out)
}

/// Decodes a protobuf request body into the object's JSON form.
pub fn decode(body: &[u8], _rt: Option<&ResourceType>) -> Result<Value, ApiError> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("missing the k8s protobuf prefix"))?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (tag, w) in fields_of(envelope)? {
        match (tag, w) {
            (1, Wire::Bytes(tm)) => {
                for (t, v) in fields_of(tm)? {
                    match (t, v) {
                        (1, Wire::Bytes(b)) => api_version = utf8(b)?,
                        (2, Wire::Bytes(b)) => kind = utf8(b)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = b,
            (3, Wire::Bytes(enc)) if !enc.is_empty() => {
                return Err(bad("content encodings are not supported"))
            }
            _ => {}
        }
    }
    let (_, _, msg) = ROOTS
        .iter()
        // DeleteOptions travel under whichever group-version the request is for.
        .find(|(av, k, _)| *k == kind && (*av == api_version || *av == "meta.k8s.io/v1"))
        .ok_or_else(|| {
            ApiError::UnsupportedMediaType(format!(
                "application/vnd.kubernetes.protobuf for {api_version} {kind}"
            ))
        })?;
    let mut obj = message(msg, raw)?;
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::api::apps::v1 as apps;
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    use prost::Message;

    /// Wraps a message as kubectl does: magic, then runtime.Unknown.
    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        [MAGIC.to_vec(), unknown.encode_to_vec()].concat()
    }

    #[test]
    fn decodes_a_deployment_like_kubectl_create_sends() {
        let d = apps::Deployment {
            metadata: Some(meta::ObjectMeta {
                name: Some("web".into()),
                namespace: Some(String::new()),
                labels: [("app".to_string(), "web".to_string())].into(),
                creation_timestamp: Some(meta::Time {
                    seconds: Some(ZERO_TIME_SECONDS),
                    nanos: Some(0),
                }),
                ..Default::default()
            }),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(0),
                selector: Some(meta::LabelSelector {
                    match_labels: [("app".to_string(), "web".to_string())].into(),
                    ..Default::default()
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: Some(meta::ObjectMeta {
                        labels: [("app".to_string(), "web".to_string())].into(),
                        ..Default::default()
                    }),
                    spec: Some(core::PodSpec {
                        containers: vec![core::Container {
                            name: Some("nginx".into()),
                            image: Some("nginx".into()),
                            ports: vec![core::ContainerPort {
                                container_port: Some(80),
                                ..Default::default()
                            }],
                            resources: Some(core::ResourceRequirements {
                                limits: [(
                                    "memory".to_string(),
                                    k8s_pb::apimachinery::pkg::api::resource::Quantity {
                                        string: Some("64Mi".into()),
                                    },
                                )]
                                .into(),
                                ..Default::default()
                            }),
                            stdin: Some(false),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                }),
                strategy: Some(apps::DeploymentStrategy::default()),
                ..Default::default()
            }),
            status: None,
        };
        let v = decode(&envelope("apps/v1", "Deployment", d.encode_to_vec()), None).unwrap();
        assert_eq!(v["kind"], "Deployment");
        assert_eq!(
            v["metadata"],
            json!({"name": "web", "labels": {"app": "web"}})
        );
        assert_eq!(v["spec"]["replicas"], 0);
        let c = &v["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "nginx");
        assert_eq!(c["ports"][0]["containerPort"], 80);
        assert_eq!(c["resources"]["limits"]["memory"], "64Mi");
        assert!(c.get("stdin").is_none());
        assert_eq!(v["spec"]["strategy"], json!({}));
    }

    /// Regression: `enableServiceLinks: false` sent as protobuf was dropped (and then
    /// defaulted back to true): a Go pointer's false or "" is explicit, unlike a plain
    /// field's.
    #[test]
    fn explicit_false_and_empty_of_pointer_fields_are_kept() {
        let p = core::Pod {
            metadata: Some(meta::ObjectMeta {
                name: Some("p".into()),
                ..Default::default()
            }),
            spec: Some(core::PodSpec {
                enable_service_links: Some(false),
                automount_service_account_token: Some(false),
                runtime_class_name: Some(String::new()),
                host_network: Some(false),
                node_name: Some(String::new()),
                containers: vec![core::Container {
                    name: Some("c".into()),
                    security_context: Some(core::SecurityContext {
                        privileged: Some(false),
                        allow_privilege_escalation: Some(false),
                        ..Default::default()
                    }),
                    tty: Some(false),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        };
        let v = decode(&envelope("v1", "Pod", p.encode_to_vec()), None).unwrap();
        let spec = &v["spec"];
        assert_eq!(spec["enableServiceLinks"], false);
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(spec["runtimeClassName"], "");
        let c = &spec["containers"][0];
        assert_eq!(c["securityContext"]["privileged"], false);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        // Plain fields' zeros are what Go's JSON would omit.
        assert!(spec.get("hostNetwork").is_none() && spec.get("nodeName").is_none());
        assert!(c.get("tty").is_none());
    }

    #[test]
    fn decodes_secrets_inline_structs_and_int_or_string() {
        let s = core::Secret {
            metadata: Some(meta::ObjectMeta {
                name: Some("s".into()),
                ..Default::default()
            }),
            data: [("p".to_string(), b"q".to_vec())].into(),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let v = decode(&envelope("v1", "Secret", s.encode_to_vec()), None).unwrap();
        assert_eq!(v["data"]["p"], "cQ==");
        assert_eq!(v["type"], "Opaque");
        let svc = core::Service {
            metadata: Some(meta::ObjectMeta {
                name: Some("svc".into()),
                ..Default::default()
            }),
            spec: Some(core::ServiceSpec {
                ports: vec![core::ServicePort {
                    port: Some(80),
                    target_port: Some(k8s_pb::apimachinery::pkg::util::intstr::IntOrString {
                        r#type: Some(1),
                        int_val: Some(0),
                        str_val: Some("http".into()),
                    }),
                    ..Default::default()
                }],
                cluster_ip: Some("None".into()),
                ..Default::default()
            }),
            status: None,
        };
        let v = decode(&envelope("v1", "Service", svc.encode_to_vec()), None).unwrap();
        assert_eq!(v["spec"]["ports"][0]["targetPort"], "http");
        assert_eq!(v["spec"]["clusterIP"], "None");
        let pod = core::Pod {
            spec: Some(core::PodSpec {
                volumes: vec![core::Volume {
                    name: Some("v".into()),
                    volume_source: Some(core::VolumeSource {
                        config_map: Some(core::ConfigMapVolumeSource {
                            local_object_reference: Some(core::LocalObjectReference {
                                name: Some("cm".into()),
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = decode(&envelope("v1", "Pod", pod.encode_to_vec()), None).unwrap();
        assert_eq!(
            v["spec"]["volumes"][0],
            json!({"name": "v", "configMap": {"name": "cm"}})
        );
    }

    #[test]
    fn rejects_what_it_cannot_decode() {
        assert!(decode(b"not protobuf", None).is_err());
        assert!(matches!(
            decode(&envelope("example.com/v1", "Widget", vec![]), None),
            Err(ApiError::UnsupportedMediaType(_))
        ));
        assert!(decode(&envelope("v1", "ConfigMap", vec![0x0a, 0x05, 0x01]), None).is_err());
    }
}
