//! ServiceAccount tokens, as kube-apiserver issues them for `TokenRequest`
//! (`kubectl create token`): JWTs with Kubernetes' claims (`sub:
//! system:serviceaccount:<ns>:<name>`, audiences, expiry, the bound object), signed with the
//! server's ES256 key (`pki/sa.key`, made on first start). A token is accepted as a bearer
//! credential while it is unexpired, names this server's audience, and its ServiceAccount
//! (and bound object) still exist with the same uid.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::ApiError;
use super::pki::{read_or_create_private, PkiError};
use crate::objects::{ObjectError, Objects};
use crate::registry::validation::Errors;

/// The issuer and default audience, as a cluster's `--service-account-issuer` usually is.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Default and bounds of `spec.expirationSeconds`, as kube-apiserver's.
pub const DEFAULT_EXPIRATION: i64 = 3600;
pub const MIN_EXPIRATION: i64 = 600;
pub const MAX_EXPIRATION: i64 = 1 << 32;

pub struct Tokens {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    /// Names the key in the token header (a digest of its public key).
    kid: String,
}

/// An object a token is bound to (`kubernetes.io.pod`, `.secret`, `.node`), or its
/// ServiceAccount.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub name: String,
    pub uid: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    pub namespace: String,
    pub serviceaccount: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub iss: String,
    pub jti: String,
    pub sub: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
}

impl Tokens {
    /// Loads the signing key from `pki_dir/sa.key`, making it on first start.
    pub fn load_or_create(pki_dir: &std::path::Path) -> Result<Tokens, PkiError> {
        let rng = SystemRandom::new();
        let bad = |e: String| PkiError::Tls(format!("service account key: {e}"));
        let pkcs8 = read_or_create_private(&pki_dir.join("sa.key"), || {
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map(|d| d.as_ref().to_vec())
                .map_err(|e| bad(e.to_string()))
        })?;
        let key =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
                .map_err(|e| bad(e.to_string()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        Ok(Tokens {
            kid: B64.encode(&digest.as_ref()[..16]),
            key,
            rng,
        })
    }

    /// A signed token carrying `claims`.
    pub fn issue(&self, claims: &Claims) -> String {
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        let signed = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(serde_json::to_vec(claims).expect("claims serialize"))
        );
        let sig = self
            .key
            .sign(&self.rng, signed.as_bytes())
            .expect("ECDSA signing with a valid key");
        format!("{signed}.{}", B64.encode(sig.as_ref()))
    }

    /// The claims of a token this server signed, if it is valid at `now` (seconds) for
    /// this server's audience. Whether its objects still exist is the caller's check.
    pub fn verify(&self, token: &str, now: i64) -> Option<Claims> {
        let (signed, sig) = token.rsplit_once('.')?;
        let (header, payload) = signed.split_once('.')?;
        let header: Value = serde_json::from_slice(&B64.decode(header).ok()?).ok()?;
        if header["alg"] != "ES256" || header["kid"] != self.kid.as_str() {
            return None;
        }
        signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        )
        .verify(signed.as_bytes(), &B64.decode(sig).ok()?)
        .ok()?;
        let claims: Claims = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
        let valid = claims.iss == ISSUER
            && claims.nbf <= now
            && now < claims.exp
            && claims.aud.iter().any(|a| a == ISSUER);
        valid.then_some(claims)
    }
}

/// The `serviceaccounts/<name>/token` subresource: validates and defaults a TokenRequest
/// as kube-apiserver does, checks the bound object, and answers it with a signed token.
pub async fn token_request(
    objects: &Objects,
    tokens: &Tokens,
    ns: &str,
    name: &str,
    input: &Value,
) -> Result<Value, ApiError> {
    let sa_rt = objects
        .registry()
        .find("", "v1", "serviceaccounts")
        .expect("serviceaccounts are served");
    let (sa, _) = objects.get_value(sa_rt, Some(ns), name).await?;
    let spec = input.get("spec").cloned().unwrap_or_else(|| json!({}));
    let expiration = spec
        .get("expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_EXPIRATION);
    let mut errs = Errors::default();
    if expiration < MIN_EXPIRATION {
        errs.invalid(
            "spec.expirationSeconds",
            expiration,
            "may not specify a duration less than 10 minutes",
        );
    } else if expiration > MAX_EXPIRATION {
        errs.invalid(
            "spec.expirationSeconds",
            expiration,
            "may not specify a duration larger than 2^32 seconds",
        );
    }
    if !errs.is_empty() {
        return Err(ApiError::Object(ObjectError::Invalid {
            kind: "TokenRequest".into(),
            group: "authentication.k8s.io".into(),
            name: name.into(),
            errors: errs.0,
        }));
    }
    let audiences: Vec<String> = match spec.get("audiences").and_then(Value::as_array) {
        Some(a) if !a.is_empty() => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => vec![ISSUER.to_string()],
    };
    let mut kubernetes = KubernetesClaims {
        namespace: ns.into(),
        serviceaccount: ObjectRef {
            name: name.into(),
            uid: uid_of(&sa),
        },
        pod: None,
        secret: None,
        node: None,
    };
    let bound = spec.get("boundObjectRef").filter(|b| b.is_object());
    if let Some(b) = bound {
        let kind = b.get("kind").and_then(Value::as_str).unwrap_or_default();
        let api_version = b.get("apiVersion").and_then(Value::as_str).unwrap_or("v1");
        let bound_name = b.get("name").and_then(Value::as_str).unwrap_or_default();
        let (plural, namespaced) = match (api_version, kind) {
            ("v1", "Pod") => ("pods", true),
            ("v1", "Secret") => ("secrets", true),
            ("v1", "Node") => ("nodes", false),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "cannot bind token to object of type {api_version}, Kind={kind}"
                )))
            }
        };
        let rt = objects
            .registry()
            .find("", "v1", plural)
            .expect("core kinds are served");
        let (obj, _) = objects
            .get_value(rt, namespaced.then_some(ns), bound_name)
            .await?;
        let uid = uid_of(&obj);
        if let Some(want) = b
            .get("uid")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
        {
            if want != uid {
                return Err(ApiError::Object(ObjectError::Conflict {
                    resource: kind.into(),
                    name: bound_name.into(),
                    message: format!("the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"),
                }));
            }
        }
        let r = Some(ObjectRef {
            name: bound_name.into(),
            uid,
        });
        match kind {
            "Pod" => kubernetes.pod = r,
            "Secret" => kubernetes.secret = r,
            _ => kubernetes.node = r,
        }
    }
    let now = jiff::Timestamp::now().as_second();
    let claims = Claims {
        aud: audiences.clone(),
        exp: now + expiration,
        iat: now,
        nbf: now,
        iss: ISSUER.into(),
        jti: uuid::Uuid::new_v4().to_string(),
        sub: format!("system:serviceaccount:{ns}:{name}"),
        kubernetes,
    };
    let token = tokens.issue(&claims);
    let time = |secs: i64| {
        jiff::Timestamp::from_second(secs)
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default()
    };
    let mut out_spec =
        json!({"audiences": audiences, "expirationSeconds": expiration, "boundObjectRef": null});
    if let Some(b) = bound {
        out_spec["boundObjectRef"] = b.clone();
    }
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": time(now)},
        "spec": out_spec,
        "status": {"token": token, "expirationTimestamp": time(claims.exp)},
    }))
}

/// Whether `token` (a bearer credential) is one of this server's ServiceAccount tokens
/// whose ServiceAccount and bound object still exist, with the uids it names.
pub async fn authenticate(objects: &Objects, tokens: &Tokens, token: &str) -> bool {
    let Some(claims) = tokens.verify(token, jiff::Timestamp::now().as_second()) else {
        return false;
    };
    let k = &claims.kubernetes;
    let checks = [
        ("serviceaccounts", true, Some(&k.serviceaccount)),
        ("pods", true, k.pod.as_ref()),
        ("secrets", true, k.secret.as_ref()),
        ("nodes", false, k.node.as_ref()),
    ];
    for (plural, namespaced, r) in checks {
        let Some(r) = r else { continue };
        let rt = objects
            .registry()
            .find("", "v1", plural)
            .expect("core kinds are served");
        match objects
            .get_value(rt, namespaced.then_some(k.namespace.as_str()), &r.name)
            .await
        {
            Ok((obj, _)) if uid_of(&obj) == r.uid => {}
            _ => return false,
        }
    }
    true
}

fn uid_of(obj: &Value) -> String {
    crate::objects::meta_str(obj, "uid")
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64) -> Claims {
        Claims {
            aud: vec![ISSUER.into()],
            exp: now + 600,
            iat: now,
            nbf: now,
            iss: ISSUER.into(),
            jti: "j".into(),
            sub: "system:serviceaccount:default:builder".into(),
            kubernetes: KubernetesClaims {
                namespace: "default".into(),
                serviceaccount: ObjectRef {
                    name: "builder".into(),
                    uid: "u1".into(),
                },
                pod: None,
                secret: None,
                node: None,
            },
        }
    }

    #[test]
    fn tokens_verify_until_they_expire_and_only_with_the_servers_key() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::load_or_create(dir.path()).unwrap();
        let now = 1_800_000_000;
        let t = tokens.issue(&claims(now));
        assert_eq!(tokens.verify(&t, now + 1), Some(claims(now)));
        assert_eq!(tokens.verify(&t, now + 600), None, "expired");
        assert_eq!(tokens.verify(&t, now - 1), None, "not yet valid");
        // The same key after a restart; another server's key refuses it.
        let again = Tokens::load_or_create(dir.path()).unwrap();
        assert!(again.verify(&t, now + 1).is_some());
        let other = Tokens::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert_eq!(other.verify(&t, now + 1), None);
        // A changed claim breaks the signature.
        let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
        let mut c = claims(now);
        c.sub = "system:serviceaccount:kube-system:admin".into();
        parts[1] = B64.encode(serde_json::to_vec(&c).unwrap());
        assert_eq!(tokens.verify(&parts.join("."), now + 1), None);
        let mut other_aud = claims(now);
        other_aud.aud = vec!["vault".into()];
        assert_eq!(tokens.verify(&tokens.issue(&other_aud), now + 1), None);
        assert_eq!(tokens.verify("not.a.token", now), None);
    }
}
