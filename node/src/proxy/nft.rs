//! The proxy's nftables table: its fixed part (base chains hooked into netfilter, the
//! dispatch maps, masquerading), and transactions that turn one set of Service
//! fragments into another by adding and removing only what changed, run as one atomic
//! `nft -f -` batch.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::model::{Fragment, MARK_MASQ_CHAIN, REJECT_CHAIN};

/// The masquerade mark bit (kube-proxy's; the CNI portmap plugin uses 0x2000).
const MASQ_MARK: &str = "0x4000";

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft: {0}")]
    Spawn(std::io::Error),
    #[error("nft refused the batch: {0}")]
    Refused(String),
}

/// The fixed part of the table, made anew. Priorities as kube-proxy's: filters at
/// dstnat - 10 (-110, before DNAT, on the addresses asked for), DNAT at dstnat (-100),
/// masquerading at srcnat (100); numbers, as older nft names them for some hooks only. (whatever was there goes: the rest is then
/// added from nothing).
pub fn base(table: &str) -> String {
    let addr_key = "ipv4_addr . inet_proto . inet_service : verdict";
    let port_key = "inet_proto . inet_service : verdict";
    let local_dst = "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport";
    format!(
        "add table ip {table}
delete table ip {table}
table ip {table} {{
  comment \"Skiff's Service proxy\"
  map service-ips {{ type {addr_key}; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\"; }}
  map service-nodeports {{ type {port_key}; comment \"NodePort traffic\"; }}
  map no-endpoint-services {{ type {addr_key}; comment \"reject or drop: no endpoints\"; }}
  map no-endpoint-nodeports {{ type {port_key}; comment \"reject or drop: no endpoints\"; }}
  chain {REJECT_CHAIN} {{ reject; }}
  chain {MARK_MASQ_CHAIN} {{ meta mark set meta mark or {MASQ_MARK}; }}
  chain masquerading {{
    meta mark & {MASQ_MARK} == 0 return
    meta mark set meta mark xor {MASQ_MARK}
    masquerade fully-random
  }}
  chain services {{
    ip daddr . meta l4proto . th dport vmap @service-ips
    {local_dst} vmap @service-nodeports
  }}
  chain endpoints-check {{
    ip daddr . meta l4proto . th dport vmap @no-endpoint-services
    {local_dst} vmap @no-endpoint-nodeports
  }}
  chain filter-input {{ type filter hook input priority -110; ct state new jump endpoints-check; }}
  chain filter-forward {{ type filter hook forward priority -110; ct state new jump endpoints-check; }}
  chain filter-output {{ type filter hook output priority -110; ct state new jump endpoints-check; }}
  chain nat-prerouting {{ type nat hook prerouting priority -100; jump services; }}
  chain nat-output {{ type nat hook output priority -100; jump services; }}
  chain nat-postrouting {{ type nat hook postrouting priority 100; jump masquerading; }}
}}
"
    )
}

/// A batch of changes, written in the order nftables needs them: what goes before what
/// refers to it is removed, what comes after what it refers to is added.
#[derive(Debug, Default)]
pub struct Transaction {
    pub base: Option<String>,
    delete_elements: Vec<String>,
    flush_chains: BTreeSet<String>,
    delete_sets: Vec<String>,
    delete_chains: Vec<String>,
    add_sets: Vec<String>,
    add_chains: Vec<String>,
    add_rules: Vec<String>,
    add_elements: Vec<String>,
    /// Chains this batch leaves unused (flushed; deleted by a later batch).
    pub dropped_chains: Vec<String>,
}

impl Transaction {
    pub fn is_empty(&self) -> bool {
        self.base.is_none()
            && self.delete_elements.is_empty()
            && self.flush_chains.is_empty()
            && self.delete_sets.is_empty()
            && self.delete_chains.is_empty()
            && self.add_sets.is_empty()
            && self.add_chains.is_empty()
            && self.add_rules.is_empty()
            && self.add_elements.is_empty()
    }

    /// Adds what turns `old` into `new` (one Service's part).
    pub fn diff(&mut self, table: &str, old: &Fragment, new: &Fragment) {
        for ((map, key), verdict) in &old.elements {
            if new.elements.get(&(*map, key.clone())) != Some(verdict) {
                self.delete_elements.push(format!(
                    "delete element ip {table} {} {{ {key} }}",
                    map.name()
                ));
            }
        }
        for (name, rules) in &old.chains {
            match new.chains.get(name) {
                Some(r) if r == rules => {}
                Some(_) => {
                    self.flush_chains.insert(name.clone());
                }
                None => {
                    self.flush_chains.insert(name.clone());
                    self.dropped_chains.push(name.clone());
                }
            }
        }
        for (name, timeout) in &old.sets {
            if new.sets.get(name) != Some(timeout) {
                self.delete_sets
                    .push(format!("delete set ip {table} {name}"));
            }
        }
        for (name, timeout) in &new.sets {
            if old.sets.get(name) != Some(timeout) {
                self.add_sets.push(format!(
                    "add set ip {table} {name} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}"
                ));
            }
        }
        for (name, rules) in &new.chains {
            if old.chains.get(name) == Some(rules) {
                continue;
            }
            // `add chain` is idempotent: it also covers a chain dropped earlier (flushed,
            // not yet deleted) coming back.
            self.add_chains.push(format!("add chain ip {table} {name}"));
            for r in rules {
                self.add_rules
                    .push(format!("add rule ip {table} {name} {r}"));
            }
        }
        for ((map, key), verdict) in &new.elements {
            if old.elements.get(&(*map, key.clone())) != Some(verdict) {
                self.add_elements.push(format!(
                    "add element ip {table} {} {{ {key} : {verdict} }}",
                    map.name()
                ));
            }
        }
    }

    /// Deletes chains left unused by an earlier batch.
    pub fn delete_chain(&mut self, table: &str, name: &str) {
        self.delete_chains
            .push(format!("delete chain ip {table} {name}"));
    }

    /// The batch as `nft -f` reads it.
    pub fn script(&self, table: &str) -> String {
        let mut s = self.base.clone().unwrap_or_default();
        for line in &self.delete_elements {
            let _ = writeln!(s, "{line}");
        }
        for name in &self.flush_chains {
            let _ = writeln!(s, "flush chain ip {table} {name}");
        }
        for group in [
            &self.delete_sets,
            &self.delete_chains,
            &self.add_sets,
            &self.add_chains,
            &self.add_rules,
            &self.add_elements,
        ] {
            for line in group {
                let _ = writeln!(s, "{line}");
            }
        }
        s
    }
}

/// libnftables (Debian's libnftables1, which the `nft` command is made of), loaded at run
/// time: one context kept across batches keeps nftables' cache of the table, so a batch
/// costs what it changes instead of a listing of every chain first (with 10,000 endpoint
/// chains: ~15 ms instead of ~60 ms a batch).
struct Libnftables {
    ctx: *mut libc::c_void,
    run: unsafe extern "C" fn(*mut libc::c_void, *const libc::c_char) -> libc::c_int,
    error: unsafe extern "C" fn(*mut libc::c_void) -> *const libc::c_char,
}

// Safety: the context is used by one thread at a time (behind the proxy's mutex).
unsafe impl Send for Libnftables {}

impl Libnftables {
    fn open() -> Option<Libnftables> {
        // Safety: dlopen/dlsym with NUL-terminated names; the symbols' types are those of
        // libnftables' public API (nftables/libnftables.h).
        unsafe {
            let lib = libc::dlopen(c"libnftables.so.1".as_ptr(), libc::RTLD_NOW);
            if lib.is_null() {
                return None;
            }
            let sym = |name: &std::ffi::CStr| {
                let p = libc::dlsym(lib, name.as_ptr());
                (!p.is_null()).then_some(p)
            };
            let new = sym(c"nft_ctx_new")?;
            let buffer_error = sym(c"nft_ctx_buffer_error")?;
            let buffer_output = sym(c"nft_ctx_buffer_output")?;
            let run = sym(c"nft_run_cmd_from_buffer")?;
            let error = sym(c"nft_ctx_get_error_buffer")?;
            let new: unsafe extern "C" fn(u32) -> *mut libc::c_void = std::mem::transmute(new);
            let buffer: unsafe extern "C" fn(*mut libc::c_void) -> libc::c_int =
                std::mem::transmute(buffer_error);
            let buffer_out: unsafe extern "C" fn(*mut libc::c_void) -> libc::c_int =
                std::mem::transmute(buffer_output);
            let ctx = new(0);
            if ctx.is_null() {
                return None;
            }
            buffer(ctx);
            buffer_out(ctx);
            Some(Libnftables {
                ctx,
                run: std::mem::transmute::<
                    *mut libc::c_void,
                    unsafe extern "C" fn(*mut libc::c_void, *const libc::c_char) -> libc::c_int,
                >(run),
                error: std::mem::transmute::<
                    *mut libc::c_void,
                    unsafe extern "C" fn(*mut libc::c_void) -> *const libc::c_char,
                >(error),
            })
        }
    }

    fn apply(&mut self, script: &str) -> Result<(), NftError> {
        let text = std::ffi::CString::new(script)
            .map_err(|_| NftError::Refused("a NUL byte in the batch".into()))?;
        // Safety: a live context and a NUL-terminated buffer; the error buffer is the
        // context's, read before the next call.
        unsafe {
            if (self.run)(self.ctx, text.as_ptr()) == 0 {
                Ok(())
            } else {
                let e = (self.error)(self.ctx);
                let msg = if e.is_null() {
                    String::new()
                } else {
                    std::ffi::CStr::from_ptr(e)
                        .to_string_lossy()
                        .trim()
                        .to_string()
                };
                Err(NftError::Refused(msg))
            }
        }
    }
}

/// Applies batches: through libnftables where it loads, else through the `nft` command.
#[derive(Default)]
pub struct Nft {
    lib: std::sync::Arc<std::sync::Mutex<Option<Libnftables>>>,
    tried: bool,
}

impl Nft {
    /// Runs a batch: all of it or, if nftables refuses any of it, none.
    pub async fn apply(&mut self, script: &str) -> Result<(), NftError> {
        if !self.tried {
            self.tried = true;
            let lib = tokio::task::spawn_blocking(Libnftables::open)
                .await
                .ok()
                .flatten();
            if lib.is_none() {
                tracing::info!("libnftables not found: the proxy runs the nft command");
            }
            *self.lib.lock().expect("nft") = lib;
        }
        if self.lib.lock().expect("nft").is_none() {
            return apply(script).await;
        }
        let (lib, script) = (self.lib.clone(), script.to_string());
        tokio::task::spawn_blocking(move || {
            lib.lock()
                .expect("nft")
                .as_mut()
                .expect("loaded")
                .apply(&script)
        })
        .await
        .map_err(|e| NftError::Refused(e.to_string()))?
    }
}

/// Runs a batch with the `nft` command: all of it or, if nft refuses any of it, none.
pub async fn apply(script: &str) -> Result<(), NftError> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(NftError::Spawn)?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(script.as_bytes())
        .await
        .map_err(NftError::Spawn)?;
    drop(stdin);
    let out = child.wait_with_output().await.map_err(NftError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Removes the table (the agent's reset); missing is fine.
pub fn remove(table: &str) {
    let _ = std::process::Command::new("nft")
        .args(["delete", "table", "ip", table])
        .stderr(std::process::Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::super::model::Map;
    use super::*;

    fn frag(elements: &[(&str, &str)], chains: &[(&str, &[&str])]) -> Fragment {
        Fragment {
            elements: elements
                .iter()
                .map(|(k, v)| ((Map::ServiceIps, k.to_string()), v.to_string()))
                .collect(),
            chains: chains
                .iter()
                .map(|(n, r)| (n.to_string(), r.iter().map(|s| s.to_string()).collect()))
                .collect(),
            sets: Default::default(),
        }
    }

    #[test]
    fn a_transaction_touches_only_what_changed() {
        let old = frag(
            &[
                ("10.96.0.5 . tcp . 80", "goto svc-a"),
                ("10.96.0.6 . tcp . 80", "goto svc-b"),
            ],
            &[
                ("svc-a", &["numgen random mod 1 vmap { 0 : goto ep-1 }"]),
                ("ep-1", &["dnat 1"]),
                ("svc-b", &["x"]),
            ],
        );
        let new = frag(
            &[
                ("10.96.0.5 . tcp . 80", "goto svc-a"),
                ("10.96.0.7 . tcp . 80", "goto svc-b"),
            ],
            &[
                ("svc-a", &["numgen random mod 1 vmap { 0 : goto ep-2 }"]),
                ("ep-2", &["dnat 2"]),
                ("svc-b", &["x"]),
            ],
        );
        let mut tx = Transaction::default();
        tx.diff("t", &old, &new);
        let script = tx.script("t");
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(
            lines,
            [
                "delete element ip t service-ips { 10.96.0.6 . tcp . 80 }",
                "flush chain ip t ep-1",
                "flush chain ip t svc-a",
                "add chain ip t ep-2",
                "add chain ip t svc-a",
                "add rule ip t ep-2 dnat 2",
                "add rule ip t svc-a numgen random mod 1 vmap { 0 : goto ep-2 }",
                "add element ip t service-ips { 10.96.0.7 . tcp . 80 : goto svc-b }",
            ]
        );
        assert_eq!(tx.dropped_chains, ["ep-1"]);
        let mut same = Transaction::default();
        same.diff("t", &new, &new);
        assert!(same.is_empty());
    }
}
