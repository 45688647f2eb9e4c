//! Fuzzing as a habit, on stable Rust. Every decoder and patch path is a [`Target`] that
//! takes bytes. `skiff fuzz` feeds each target mutations of a seed corpus captured from
//! real kubectl requests (`control-plane/fuzz/corpus/<target>/`, made by
//! `scripts/fuzz-corpus.py`) for a set time, and files every input that panics or takes
//! too long. A finding, once fixed, goes to `control-plane/fuzz/regressions/<target>/`;
//! the test suite replays those and runs each target for a moment.
//!
//! Mutations are byte-level (flips, interesting bytes and tokens, inserts, deletes,
//! duplicated runs, splices of two seeds) and, for JSON inputs, structural (a node
//! replaced, removed, retyped, duplicated many times, or given a patch directive).

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::objects::patch::{self, PatchType};
use crate::objects::{managed, Objects, Target as Part, WriteOptions};
use crate::registry::{Operation, Registry};

/// One fuzzed entry point.
pub struct Target {
    pub name: &'static str,
    /// Inputs are JSON documents, mutated structurally as well as byte by byte.
    json: bool,
    run: fn(&[u8]),
    /// The corpus directories its seeds come from (its own name if empty).
    seeds_from: &'static [&'static str],
}

impl Target {
    const fn new(name: &'static str, json: bool, run: fn(&[u8])) -> Target {
        Target {
            name,
            json,
            run,
            seeds_from: &[],
        }
    }

    /// Its seeds from the corpus under `dir`.
    pub fn seeds(&self, dir: &Path) -> Vec<Vec<u8>> {
        match self.seeds_from {
            [] => inputs(dir, self.name),
            from => from.iter().flat_map(|d| inputs(dir, d)).collect(),
        }
    }
}

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    Target::new("json", true, json_body),
    Target::new("yaml", false, yaml_body),
    Target::new("protobuf", false, protobuf_body),
    Target::new("json-patch", true, json_patch),
    Target::new("merge-patch", true, merge_patch),
    Target::new("strategic-merge-patch", true, strategic_merge_patch),
    Target::new("apply", true, apply),
    Target {
        seeds_from: &[
            "json-patch",
            "merge-patch",
            "strategic-merge-patch",
            "apply",
        ],
        ..Target::new("write-path", true, write_path)
    },
    Target::new("label-selector", false, label_selector),
    Target::new("field-selector", false, field_selector),
    Target::new("quantity", false, quantity),
    Target::new("query", false, query),
    Target::new("wal", false, wal),
];

/// An input that made a target panic or take too long.
#[derive(Debug)]
pub struct Finding {
    pub target: &'static str,
    pub input: Vec<u8>,
    pub problem: String,
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Registry::new)
}

fn json_of(input: &[u8]) -> Option<Value> {
    serde_json::from_slice(input).ok()
}

/// Admission as every writer runs it: decode, default, validate (also as an update of
/// itself), the table row, and the delete check, for the object's kind (without one, a kind
/// picked by the input's size, as a request names one kind).
fn admit(v: &Value, size: usize) {
    let all = registry().resources;
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or(all[size % all.len()].kind);
    let now = jiff::Timestamp::now();
    for rt in all.iter().filter(|r| r.kind == kind) {
        let _ = rt.strategy.admit(v, None, Operation::Create);
        let _ = rt.strategy.admit(v, Some(v), Operation::Update);
        let _ = rt.strategy.admit(v, Some(v), Operation::UpdateStatus);
        let _ = rt.strategy.cells(v, now);
    }
}

fn decode(input: &[u8], content_type: &str) -> Option<Value> {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_str(content_type).ok()?,
    );
    crate::apiserver::resource::decode_body(&headers, input, None).ok()
}

fn json_body(input: &[u8]) {
    if let Some(v) = decode(input, "application/json") {
        admit(&v, input.len());
    }
}

fn yaml_body(input: &[u8]) {
    if let Some(v) = decode(input, "application/yaml") {
        admit(&v, input.len());
    }
}

fn protobuf_body(input: &[u8]) {
    if let Some(v) = decode(input, "application/vnd.kubernetes.protobuf") {
        admit(&v, input.len());
    }
}

/// `[document, patch]`.
fn pair(input: &[u8]) -> Option<(Value, Value)> {
    match json_of(input)? {
        Value::Array(mut a) if a.len() == 2 => {
            let p = a.pop()?;
            Some((a.pop()?, p))
        }
        _ => None,
    }
}

fn json_patch(input: &[u8]) {
    if let Some((doc, p)) = pair(input) {
        let _ = patch::json_patch(&doc, &p);
    }
}

fn merge_patch(input: &[u8]) {
    if let Some((doc, p)) = pair(input) {
        let _ = patch::merge_patch(&doc, &p);
    }
}

fn strategic_merge_patch(input: &[u8]) {
    if let Some((doc, p)) = pair(input) {
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("Pod");
        let _ = patch::strategic_merge(kind, &doc, &p);
    }
}

/// Server-side apply of configurations (objects: the server refuses anything else before
/// it gets here) over stored objects.
fn apply(input: &[u8]) {
    if let Some((current, applied)) = pair(input).filter(|(c, a)| c.is_object() && a.is_object()) {
        for force in [false, true] {
            let _ = managed::apply(Some(&current), &applied, "fuzz", "v1", force);
        }
        let _ = managed::apply(None, &applied, "fuzz", "v1", false);
        let mut updated = applied.clone();
        managed::record_update(&mut updated, Some(&current), "fuzz", "v1", "Update");
    }
}

/// The object store's write path, as HTTP handlers drive it, on a scratch store:
/// `[document, patch]` creates (or replaces) the document, then patches it with each
/// patch type and applies it.
fn write_path(input: &[u8]) {
    static OBJECTS: OnceLock<(tokio::runtime::Runtime, Arc<Objects>, tempfile::TempDir)> =
        OnceLock::new();
    let Some((doc, p)) = pair(input) else { return };
    let (rt, objects, _) = OBJECTS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("a scratch directory");
        let store = crate::store::SledStore::open(dir.path(), 100).expect("a scratch store");
        let objects = Arc::new(Objects::new(Arc::new(store), Arc::new(Registry::new())));
        runtime
            .block_on(crate::controllers::ensure_system_namespaces(&objects))
            .expect("system namespaces");
        (runtime, objects, dir)
    });
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("ConfigMap");
    let Some(res) = registry().resources.iter().find(|r| r.kind == kind) else {
        return;
    };
    let ns = res.namespaced.then_some("default");
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("fuzz")
        .to_string();
    let w = WriteOptions::default();
    rt.block_on(async {
        let mut fresh = doc.clone();
        if let Some(m) = fresh.get_mut("metadata").and_then(Value::as_object_mut) {
            for f in [
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "managedFields",
            ] {
                m.remove(f);
            }
        }
        if objects.create(res, ns, fresh.clone(), &w).await.is_err() {
            let _ = objects.update(res, ns, &name, fresh, Part::Main, &w).await;
        }
        for ptype in [PatchType::Json, PatchType::Merge, PatchType::Strategic] {
            let _ = objects
                .patch(res, ns, &name, ptype, p.clone(), Part::Main, &w)
                .await;
        }
        let apply = WriteOptions {
            field_manager: Some("fuzz".into()),
            ..WriteOptions::default()
        };
        let _ = objects
            .patch(
                res,
                ns,
                &name,
                PatchType::Apply,
                p.clone(),
                Part::Main,
                &apply,
            )
            .await;
        let _ = objects
            .patch(res, ns, &name, PatchType::Merge, p, Part::Status, &w)
            .await;
    });
}

fn text(input: &[u8]) -> Option<&str> {
    std::str::from_utf8(input).ok()
}

fn label_selector(input: &[u8]) {
    let Some(s) = text(input) else { return };
    if let Ok(sel) = crate::selectors::Selector::parse(s) {
        let labels = json!({"app": "web", "tier": "frontend", "n": "5"});
        let _ = sel.matches_labels(labels.as_object());
    }
}

fn field_selector(input: &[u8]) {
    let Some(s) = text(input) else { return };
    for res in registry().resources {
        if let Ok(sel) = crate::selectors::FieldSelector::parse(s, |f| res.field(f)) {
            let _ = sel.matches(&json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "unschedulable": true}, "status": {"phase": "Running"}}));
        }
    }
}

fn quantity(input: &[u8]) {
    if let Some(s) = text(input) {
        let _ = crate::quantity::parse(s);
    }
}

fn query(input: &[u8]) {
    let Some(s) = text(input) else { return };
    let (path, q) = s.split_once('?').unwrap_or((s, ""));
    let _ = crate::apiserver::request::parse_path(path);
    let _ = crate::apiserver::request::Query::parse(Some(q)).map(|q| {
        let _ = q.int("timeoutSeconds");
        let _ = q.int("limit");
        q.flag("watch")
    });
}

fn wal(input: &[u8]) {
    for newest in [true, false] {
        let _ = crate::store::wal::scan_all(input, newest);
    }
}

thread_local! {
    /// Panics on a fuzzing thread are findings, not noise on stderr.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn quiet_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info)
            }
        }));
    });
}

/// Runs `input` through `target`: the problem, if it panicked or took longer than `slow`.
fn exec(target: &Target, input: &[u8], slow: Duration) -> Option<String> {
    let t = Instant::now();
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    QUIET.with(|q| q.set(false));
    let took = t.elapsed();
    match result {
        Err(p) => Some(format!(
            "panicked: {}",
            p.downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)")
        )),
        Ok(()) if took > slow => Some(format!("took {took:?}")),
        Ok(()) => None,
    }
}

/// The files of `dir/<target>/`, sorted.
pub fn inputs(dir: &Path, target: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(target))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// Runs `target` on each of `inputs` once (a regression corpus).
pub fn replay(target: &Target, inputs: &[Vec<u8>], slow: Duration) -> Vec<Finding> {
    quiet_panics();
    inputs
        .iter()
        .filter_map(|i| {
            exec(target, i, slow).map(|problem| Finding {
                target: target.name,
                input: i.clone(),
                problem,
            })
        })
        .collect()
}

/// What a fuzzing run did.
pub struct Run {
    pub execs: u64,
    pub findings: Vec<Finding>,
}

/// Replays `seeds` on `target`, then fuzzes it for `duration` from them, reproducibly for a
/// given `rng_seed`.
pub fn fuzz(
    target: &Target,
    seeds: &[Vec<u8>],
    duration: Duration,
    rng_seed: u64,
    slow: Duration,
) -> Run {
    quiet_panics();
    let mut rng = SmallRng::seed_from_u64(rng_seed);
    let fallback = [b"{}".to_vec()];
    let seeds: &[Vec<u8>] = if seeds.is_empty() { &fallback } else { seeds };
    let mut run = Run {
        execs: 0,
        findings: Vec::new(),
    };
    // Seeds first, as they are; `duration` is for mutated inputs (replaying the seeds of a
    // slow target can take most of a second in a debug build on a busy machine).
    run.findings.extend(replay(target, seeds, slow));
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline && run.findings.len() < 20 {
        let base = &seeds[rng.random_range(0..seeds.len())];
        let other = &seeds[rng.random_range(0..seeds.len())];
        let input = if target.json && rng.random_bool(0.6) {
            match json_of(base) {
                Some(mut v) => {
                    for _ in 0..rng.random_range(1..4) {
                        mutate_json(&mut v, &mut rng, 0);
                    }
                    serde_json::to_vec(&v).unwrap_or_default()
                }
                None => mutate_bytes(base, other, &mut rng),
            }
        } else {
            mutate_bytes(base, other, &mut rng)
        };
        if input.len() > MAX_INPUT {
            continue;
        }
        run.execs += 1;
        if let Some(problem) = exec(target, &input, slow) {
            run.findings.push(Finding {
                target: target.name,
                input,
                problem,
            });
        }
    }
    run
}

/// The largest input tried: the API server refuses larger request bodies.
const MAX_INPUT: usize = 3 * 1024 * 1024;

/// Bytes and tokens that tend to matter to decoders of Kubernetes objects.
const TOKENS: &[&str] = &[
    "null",
    "true",
    "false",
    "-1",
    "0",
    "1e309",
    "-0",
    "18446744073709551616",
    "\"\"",
    "[]",
    "{}",
    "\"$patch\"",
    "\"delete\"",
    "\"replace\"",
    "\"$retainKeys\"",
    "\"$setElementOrder/containers\"",
    "\"$deleteFromPrimitiveList/finalizers\"",
    "..",
    "/",
    "\\u0000",
    "\\ud800",
    "\"k:{\\\"name\\\":\\\"x\\\"}\"",
    "&a",
    "*a",
    "!!binary",
    "---\n",
    "<<: *a",
    "k8s\u{0}",
    ",",
    ":",
    "\"metadata\"",
    "\"spec\"",
    "\"status\"",
    "in (",
    "notin",
    "!",
    "==",
    "!=",
    "Ki",
    "Mi",
    "e3",
    "m",
    ".5",
    "%",
    "&",
    "=",
];

fn mutate_bytes(base: &[u8], other: &[u8], rng: &mut SmallRng) -> Vec<u8> {
    let mut out = base.to_vec();
    for _ in 0..rng.random_range(1..5) {
        let len = out.len();
        let at = if len == 0 {
            0
        } else {
            rng.random_range(0..=len)
        };
        match rng.random_range(0..8) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] = *[
                    0u8, 0xff, 0x7f, 0x80, b'"', b'{', b'}', b'[', b']', b'\\', b'\n',
                ]
                .get(rng.random_range(0..11))
                .unwrap_or(&0);
            }
            2 => {
                let t = TOKENS[rng.random_range(0..TOKENS.len())];
                out.splice(at..at, t.bytes());
            }
            3 if len > 0 => {
                let end = (at + rng.random_range(1..16)).min(len);
                out.drain(at.min(len)..end);
            }
            4 if len > 0 => {
                // A run repeated: long strings, deep nesting, many list items.
                let start = rng.random_range(0..len);
                let end = (start + rng.random_range(1..64)).min(len);
                let chunk = out[start..end].to_vec();
                for _ in 0..rng.random_range(1..32) {
                    out.splice(at..at, chunk.iter().copied());
                }
            }
            5 if !other.is_empty() => {
                let cut = rng.random_range(0..other.len());
                out.truncate(at);
                out.extend_from_slice(&other[cut..]);
            }
            6 => out.truncate(at),
            _ => {
                let n = rng.random_range(1..8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                out.splice(at..at, bytes);
            }
        }
    }
    out
}

fn random_value(rng: &mut SmallRng) -> Value {
    match rng.random_range(0..10) {
        0 => Value::Null,
        1 => json!(rng.random_bool(0.5)),
        2 => json!(rng.random_range(-3i64..70000)),
        3 => json!(rng.random::<f64>() * 1e6),
        4 => {
            let s = [
                "",
                "x",
                "..",
                "/",
                "a/b",
                "$(X)",
                "100m",
                "-1",
                "k:{\"name\":\"a\"}",
            ];
            json!(s[rng.random_range(0..s.len())])
        }
        5 => json!([]),
        6 => json!({}),
        7 => json!([{"name": "a"}, {"name": "a"}, {"name": null}]),
        8 => {
            let d = ["delete", "replace", "merge", "bogus"][rng.random_range(0..4)];
            json!({ "$patch": d })
        }
        _ => {
            let op = ["add", "remove", "replace", "move", "copy", "test"][rng.random_range(0..6)];
            let path =
                ["", "/", "/spec", "//", "/metadata/name", "/a/-", "/0"][rng.random_range(0..7)];
            json!({"op": op, "path": path, "from": "/metadata", "value": []})
        }
    }
}

const KEYS: &[&str] = &[
    "metadata",
    "spec",
    "status",
    "name",
    "namespace",
    "kind",
    "apiVersion",
    "$patch",
    "$retainKeys",
    "$setElementOrder/containers",
    "containers",
    "volumes",
    "ports",
    "env",
    "finalizers",
    "labels",
    "managedFields",
    "resourceVersion",
    "op",
    "path",
    "from",
    "value",
];

/// Changes one node somewhere in `v`.
fn mutate_json(v: &mut Value, rng: &mut SmallRng, depth: usize) {
    let descend = depth < 12 && rng.random_bool(0.7);
    match v {
        Value::Object(m) if !m.is_empty() && descend => {
            let i = rng.random_range(0..m.len());
            let key = m.keys().nth(i).cloned().unwrap_or_default();
            match rng.random_range(0..6) {
                0 => {
                    m.remove(&key);
                }
                1 => {
                    m.insert(
                        KEYS[rng.random_range(0..KEYS.len())].into(),
                        random_value(rng),
                    );
                }
                _ => {
                    if let Some(child) = m.get_mut(&key) {
                        mutate_json(child, rng, depth + 1);
                    }
                }
            }
        }
        Value::Array(a) if !a.is_empty() && descend => {
            let i = rng.random_range(0..a.len());
            match rng.random_range(0..6) {
                0 => {
                    a.remove(i);
                }
                1 => {
                    // Many copies: quadratic work shows up as a slow input.
                    let item = a[i].clone();
                    // Bounded so the input stays within what the server accepts.
                    let size = item.to_string().len().max(1);
                    let n = rng.random_range(2..2000).min(MAX_INPUT / 4 / size);
                    a.extend(std::iter::repeat_n(item, n));
                }
                2 => a.push(random_value(rng)),
                _ => mutate_json(&mut a[i], rng, depth + 1),
            }
        }
        _ => *v = random_value(rng),
    }
}

/// `skiff fuzz`: runs `targets` (all if empty) for `duration` each from the corpus in
/// `dir` (`corpus/` and `regressions/`), saving findings under `findings`. Call it outside
/// any async runtime (the write-path target runs its own).
pub fn run_cli(
    dir: &Path,
    targets: &[String],
    duration: Duration,
    findings: &Path,
    rng_seed: u64,
) -> std::io::Result<usize> {
    let mut total = 0;
    for t in TARGETS
        .iter()
        .filter(|t| targets.is_empty() || targets.iter().any(|n| n == t.name))
    {
        let mut seeds = t.seeds(&dir.join("corpus"));
        seeds.extend(inputs(&dir.join("regressions"), t.name));
        let run = fuzz(t, &seeds, duration, rng_seed, Duration::from_secs(2));
        println!(
            "{:<22} {:>9} inputs, {} seeds, {} findings",
            t.name,
            run.execs,
            seeds.len(),
            run.findings.len()
        );
        for f in &run.findings {
            let digest = ring::digest::digest(&ring::digest::SHA256, &f.input);
            let name: String = digest.as_ref()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let path = findings.join(t.name).join(name);
            std::fs::create_dir_all(path.parent().expect("has a parent"))?;
            std::fs::write(&path, &f.input)?;
            println!("  {}: {}", path.display(), f.problem);
        }
        total += run.findings.len();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
    }

    fn show(findings: &[Finding]) -> String {
        findings
            .iter()
            .map(|f| {
                let shown: String = String::from_utf8_lossy(&f.input)
                    .chars()
                    .take(300)
                    .collect();
                format!("{}: {} on {shown:?}", f.target, f.problem)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every finding stays fixed: the regression corpus runs clean.
    #[test]
    fn regressions_stay_fixed() {
        let mut all = Vec::new();
        for t in TARGETS {
            all.extend(replay(
                t,
                &inputs(&dir().join("regressions"), t.name),
                Duration::from_secs(10),
            ));
        }
        assert!(all.is_empty(), "{}", show(&all));
    }

    /// Each target, fuzzed for a moment from its seeds (`SKIFF_FUZZ_SECONDS` for longer).
    #[test]
    fn each_target_survives_a_short_fuzzing_run() {
        let secs: f64 = std::env::var("SKIFF_FUZZ_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1.0);
        let mut all = Vec::new();
        for t in TARGETS {
            let seeds = t.seeds(&dir().join("corpus"));
            // Generous for a debug build on a busy machine: quadratic work on inputs of a
            // few MiB takes minutes.
            let slow = Duration::from_secs(30);
            let run = fuzz(t, &seeds, Duration::from_secs_f64(secs), 7, slow);
            assert!(run.execs > 0, "{} ran nothing", t.name);
            all.extend(run.findings);
        }
        assert!(all.is_empty(), "{}", show(&all));
    }

    /// The fuzzer finds what it should: a target that panics on a byte is reported.
    #[test]
    fn a_panicking_target_is_reported() {
        fn picky(input: &[u8]) {
            assert!(!input.contains(&b'!'), "a bang");
        }
        let t = Target::new("picky", false, picky);
        let run = fuzz(
            &t,
            &[b"hello".to_vec()],
            Duration::from_secs(2),
            1,
            Duration::from_secs(5),
        );
        assert!(
            run.findings.iter().any(|f| f.problem.contains("a bang")),
            "{} inputs, no finding",
            run.execs
        );
    }
}
