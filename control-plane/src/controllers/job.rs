//! Jobs, as kube-controller-manager's job controller: pods run to completion,
//! `parallelism` at a time, until `completions` succeed (or, without completions, one
//! does); `completionMode: Indexed` gives each pod an index (name, label, annotation,
//! `JOB_COMPLETION_INDEX`, hostname); failures are retried after a growing back-off up to
//! `backoffLimit` (or `backoffLimitPerIndex` per index, with `maxFailedIndexes`);
//! `activeDeadlineSeconds`, `successPolicy`, `podReplacementPolicy`, `suspend` and
//! `ttlSecondsAfterFinished` as in Kubernetes. Pods carry the `job-tracking` finalizer
//! until counted: a terminal pod is first recorded in `uncountedTerminatedPods`, then
//! released, then moved into the counters, so no pod is counted twice or lost across a
//! crash. Terminal conditions come in two steps as in kube 1.33: `SuccessCriteriaMet` /
//! `FailureTarget` first (remaining pods are stopped), then `Complete` / `Failed`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::pods::{self, condition_true, str_at};
use crate::events::{Event, EventType, Events, Recorder};
use crate::objects::{now, now_string, DeleteOptions, ObjectError, Objects, Target, WriteOptions};
use crate::runtime::{self, cache, written_rev, Action, Cache, Informer, Queue};
use crate::store::Revision;

const COMPONENT: &str = "job-controller";
pub const FINALIZER: &str = "batch.kubernetes.io/job-tracking";
pub const INDEX: &str = "batch.kubernetes.io/job-completion-index";
const INDEX_FAILURES: &str = "batch.kubernetes.io/job-index-failure-count";
/// kube's pod failure back-off: 10 s, doubling, at most 6 minutes.
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);

struct Ctx {
    objects: Arc<Objects>,
    jobs: Arc<Informer>,
    pods: Arc<Informer>,
    backoff_base: Duration,
    /// When each job (by uid) last saw a pod fail: new pods wait out the back-off.
    last_failure: Mutex<HashMap<String, Instant>>,
    events: Recorder,
}

pub fn spawn(cache: &Arc<Cache>, backoff_base: Duration, events: &Arc<Events>) {
    let ctx = Arc::new(Ctx {
        objects: cache.objects().clone(),
        jobs: cache.of("batch", "v1", "jobs"),
        pods: cache.of("", "v1", "pods"),
        backoff_base,
        last_failure: Mutex::default(),
        events: events.recorder(COMPONENT),
    });
    let queue = Queue::new();
    let q = queue.clone();
    ctx.jobs.on_change(move |c| {
        // A deleted job is looked at too: its pods' finalizers must go.
        q.add(cache::key_of(c.object()));
    });
    super::queue_controllers(&ctx.pods, "Job", &queue);
    runtime::spawn_controller(COMPONENT, queue, move |key| reconcile(ctx.clone(), key));
}

fn has_finalizer(p: &Value) -> bool {
    p.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|fs| fs.iter().any(|f| f == FINALIZER))
}

fn index_of(p: &Value) -> Option<i64> {
    p.pointer("/metadata/annotations")
        .and_then(|a| a.get(INDEX))
        .and_then(Value::as_str)
        .and_then(|i| i.parse().ok())
}

/// `0,1,2,4` as kube writes index sets: `0-2,4`.
pub fn format_indexes(set: &BTreeSet<i64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = set.iter().peekable();
    while let Some(&start) = it.next() {
        let mut end = start;
        while it.peek().is_some_and(|n| **n == end + 1) {
            end = *it.next().expect("peeked");
        }
        out.push(if end == start {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

pub fn parse_indexes(s: &str) -> BTreeSet<i64> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(n) = part.parse() {
                    out.insert(n);
                }
            }
        }
    }
    out
}

/// Removes the tracking finalizer from a pod.
async fn release(ctx: &Ctx, pod: &Value) -> Result<Revision, ObjectError> {
    let (ns, name) = (
        str_at(pod, "/metadata/namespace"),
        str_at(pod, "/metadata/name"),
    );
    super::edit_meta_list(
        &ctx.objects,
        ctx.pods.rt,
        Some(ns),
        name,
        "finalizers",
        |fs| fs.retain(|f| f != FINALIZER),
    )
    .await
}

async fn delete_pod(ctx: &Ctx, job: &Value, pod: &Value) -> Result<Revision, ObjectError> {
    let opts = DeleteOptions {
        precondition_uid: Some(str_at(pod, "/metadata/uid").to_string()),
        ..Default::default()
    };
    let (ns, name) = (
        str_at(pod, "/metadata/namespace"),
        str_at(pod, "/metadata/name"),
    );
    match ctx.objects.delete(ctx.pods.rt, Some(ns), name, &opts).await {
        Ok(w) => {
            ctx.event(
                job,
                EventType::Normal,
                "SuccessfulDelete",
                &format!("Deleted pod: {name}"),
            );
            Ok(written_rev(&w))
        }
        Err(ObjectError::NotFound { .. }) | Err(ObjectError::Conflict { .. }) => Ok(0),
        Err(e) => Err(e),
    }
}

/// What one reconcile works out from the job and its pods.
struct State {
    status: Value,
    succeeded: i64,
    failed: i64,
    completed: BTreeSet<i64>,
    failed_indexes: BTreeSet<i64>,
    /// Per index: failures so far (for backoffLimitPerIndex).
    index_failures: HashMap<i64, i64>,
    active: Vec<Arc<Value>>,
    terminating: Vec<Arc<Value>>,
    new_failures: bool,
}

async fn reconcile(ctx: Arc<Ctx>, key: String) -> Result<Action, ObjectError> {
    let (ns, name) = cache::split_key(&key);
    let ns = ns.unwrap_or_default();
    let job = ctx.jobs.get(Some(ns), name);
    // Pods whose job is gone (or is another job of the name) keep no finalizer.
    let uid = job.as_ref().map(|j| str_at(j, "/metadata/uid").to_string());
    let mut last: Revision = 0;
    for p in ctx.pods.list(Some(ns)) {
        let orphaned = pods::controller_ref(&p).is_some_and(|r| {
            r["kind"] == "Job" && r["name"] == name && uid.as_deref() != r["uid"].as_str()
        });
        if orphaned && has_finalizer(&p) {
            last = last.max(release(&ctx, &p).await?);
        }
    }
    let Some(job) = job else {
        return Ok(Action::Done);
    };
    let job: Value = (*job).clone();
    let uid = uid.unwrap_or_default();
    let finished = ["Complete", "Failed"]
        .iter()
        .find_map(|t| condition_true(&job, t));
    if let Some(done) = finished {
        // Every pod is released; then the TTL runs.
        for p in ctx.pods.list(Some(ns)) {
            if pods::controlled_by(&p, &uid) && has_finalizer(&p) {
                release(&ctx, &p).await?;
            }
        }
        return ttl(&ctx, &job, done).await;
    }
    if pods::is_terminating(&job) {
        return Ok(Action::Done);
    }
    let mine: Vec<Arc<Value>> = ctx
        .pods
        .list(Some(ns))
        .into_iter()
        .filter(|p| pods::controlled_by(p, &uid))
        .collect();
    let spec = &job["spec"];
    let indexed = spec["completionMode"] == "Indexed";
    let suspended = spec["suspend"] == true;
    let only_failed = spec["podReplacementPolicy"] == "Failed";
    let stopping = condition_true(&job, "SuccessCriteriaMet").is_some()
        || condition_true(&job, "FailureTarget").is_some();

    // 1. Count terminal pods: record them as uncounted, release them, count them.
    let mut status = job.get("status").cloned().unwrap_or_else(|| json!({}));
    let mut uncounted_s: Vec<String> = str_list(&status, "succeeded");
    let mut uncounted_f: Vec<String> = str_list(&status, "failed");
    let mut added = false;
    for p in &mine {
        if !has_finalizer(p) {
            continue;
        }
        let id = str_at(p, "/metadata/uid").to_string();
        if uncounted_s.contains(&id) || uncounted_f.contains(&id) {
            continue;
        }
        let phase = str_at(p, "/status/phase");
        if phase == "Succeeded" {
            uncounted_s.push(id);
            added = true;
        } else if phase == "Failed"
            // A deleted pod counts as failed (unless it was stopped on purpose), so it is
            // replaced at once; with podReplacementPolicy Failed only when it has failed.
            || (pods::is_terminating(p) && !only_failed && !stopping && !suspended)
        {
            uncounted_f.push(id);
            added = true;
        }
    }
    if added {
        status["uncountedTerminatedPods"] =
            json!({"succeeded": uncounted_s, "failed": uncounted_f});
        write_status(&ctx, &job, &status).await?;
    }
    for p in &mine {
        let id = str_at(p, "/metadata/uid").to_string();
        let stopped = pods::is_terminal(p) || pods::is_terminating(p);
        if has_finalizer(p)
            && (uncounted_s.contains(&id)
                || uncounted_f.contains(&id)
                || (stopped && (stopping || suspended)))
        {
            last = last.max(release(&ctx, p).await?);
        }
    }
    let by_uid: HashMap<&str, &Arc<Value>> = mine
        .iter()
        .map(|p| (str_at(p, "/metadata/uid"), p))
        .collect();
    let mut st = State {
        succeeded: status["succeeded"].as_i64().unwrap_or(0) + uncounted_s.len() as i64,
        failed: status["failed"].as_i64().unwrap_or(0) + uncounted_f.len() as i64,
        completed: parse_indexes(status["completedIndexes"].as_str().unwrap_or("")),
        failed_indexes: parse_indexes(status["failedIndexes"].as_str().unwrap_or("")),
        index_failures: HashMap::new(),
        active: Vec::new(),
        terminating: Vec::new(),
        new_failures: !uncounted_f.is_empty(),
        status,
    };
    for id in &uncounted_s {
        if let Some(i) = by_uid.get(id.as_str()).and_then(|p| index_of(p)) {
            st.completed.insert(i);
        }
    }
    let per_index_limit = spec["backoffLimitPerIndex"].as_i64();
    for p in &mine {
        let failed_pod = str_at(p, "/status/phase") == "Failed"
            || uncounted_f.iter().any(|u| u == str_at(p, "/metadata/uid"));
        if let (true, Some(i)) = (failed_pod, index_of(p)) {
            let before: i64 = p
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(INDEX_FAILURES))
                .and_then(Value::as_str)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let n = st.index_failures.entry(i).or_default();
            *n = (*n).max(before + 1);
            if per_index_limit.is_some_and(|l| *n > l) && !st.completed.contains(&i) {
                st.failed_indexes.insert(i);
            }
        }
    }
    st.status["uncountedTerminatedPods"] = json!({});
    for p in &mine {
        if pods::is_terminal(p) {
            continue;
        }
        if pods::is_terminating(p) {
            st.terminating.push(p.clone());
        } else {
            st.active.push(p.clone());
        }
    }
    if st.new_failures {
        ctx.last_failure
            .lock()
            .expect("failures")
            .insert(uid.clone(), Instant::now());
    }
    if last > 0 {
        ctx.pods.wait_for(last).await;
    }

    // 2. Decide: suspended, finishing, or running pods.
    let mut requeue: Option<Duration> = None;
    let completions = spec["completions"].as_i64();
    let parallelism = spec["parallelism"].as_i64().unwrap_or(1).max(0);
    let now_t = now();
    if suspended {
        for p in &st.active {
            delete_pod(&ctx, &job, p).await?;
        }
        if condition_true(&job, "Suspended").is_none() {
            set_condition(
                &mut st.status,
                "Suspended",
                "True",
                "JobSuspended",
                "Job suspended",
            );
            ctx.event(&job, EventType::Normal, "Suspended", "Job suspended");
        }
        st.status.as_object_mut().map(|s| s.remove("startTime"));
        st.active.clear();
    } else {
        if condition_true(&job, "Suspended").is_some() {
            set_condition(
                &mut st.status,
                "Suspended",
                "False",
                "JobResumed",
                "Job resumed",
            );
            ctx.event(&job, EventType::Normal, "Resumed", "Job resumed");
        }
        if st.status.get("startTime").is_none_or(Value::is_null) {
            st.status["startTime"] = json!(now_string());
        }
        let target = terminal_target(&job, &st, completions, now_t, &mut requeue);
        let target_cond = ["SuccessCriteriaMet", "FailureTarget"]
            .iter()
            .find_map(|t| {
                condition_true(&job, t).map(|c| (*t, c["reason"].clone(), c["message"].clone()))
            })
            .map(|(t, r, m)| {
                (
                    t,
                    r.as_str().unwrap_or("").to_string(),
                    m.as_str().unwrap_or("").to_string(),
                )
            })
            .or(target.map(|(t, r, m)| (t, r.to_string(), m)));
        match target_cond {
            Some((type_, reason, message)) => {
                if condition_true(&job, type_).is_none() {
                    set_condition(&mut st.status, type_, "True", &reason, &message);
                    if type_ == "FailureTarget" {
                        ctx.event(&job, EventType::Warning, &reason, &message);
                    }
                }
                for p in &st.active {
                    delete_pod(&ctx, &job, p).await?;
                }
                let active_left = st.active.len() + st.terminating.len();
                st.active.clear();
                if active_left == 0 {
                    if type_ == "SuccessCriteriaMet" {
                        set_condition(&mut st.status, "Complete", "True", &reason, &message);
                        st.status["completionTime"] = json!(now_string());
                        ctx.event(&job, EventType::Normal, "Completed", "Job completed");
                    } else {
                        set_condition(&mut st.status, "Failed", "True", &reason, &message);
                    }
                }
            }
            None => {
                if let Some(d) =
                    manage(&ctx, &job, &mut st, completions, parallelism, only_failed).await?
                {
                    requeue = Some(requeue.map_or(d, |r| r.min(d)));
                }
            }
        }
    }

    // 3. Status.
    let ready = st.active.iter().filter(|p| pods::is_ready(p)).count();
    let s = &mut st.status;
    s["active"] = json!(st.active.len());
    s["ready"] = json!(ready);
    s["terminating"] = json!(st.terminating.len());
    s["succeeded"] = json!(st.succeeded);
    s["failed"] = json!(st.failed);
    for (k, zero) in [("active", 0), ("succeeded", 0), ("failed", 0)] {
        if s[k] == zero {
            s.as_object_mut().map(|o| o.remove(k));
        }
    }
    if indexed {
        s["completedIndexes"] = json!(format_indexes(&st.completed));
        if per_index_limit.is_some() {
            s["failedIndexes"] = json!(format_indexes(&st.failed_indexes));
        }
    }
    if job.get("status") != Some(&st.status) {
        write_status(&ctx, &job, &st.status).await?;
    }
    Ok(requeue.map_or(Action::Done, Action::RequeueAfter))
}

fn str_list(status: &Value, k: &str) -> Vec<String> {
    status
        .pointer(&format!("/uncountedTerminatedPods/{k}"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the job has reached an end: `(condition, reason, message)` of the target.
fn terminal_target(
    job: &Value,
    st: &State,
    completions: Option<i64>,
    now_t: jiff::Timestamp,
    requeue: &mut Option<Duration>,
) -> Option<(&'static str, &'static str, String)> {
    let spec = &job["spec"];
    let indexed = spec["completionMode"] == "Indexed";
    let per_index = spec["backoffLimitPerIndex"].as_i64().is_some();
    if !per_index && st.failed > spec["backoffLimit"].as_i64().unwrap_or(6) {
        return Some((
            "FailureTarget",
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit".into(),
        ));
    }
    if let Some(max) = spec["maxFailedIndexes"].as_i64() {
        if st.failed_indexes.len() as i64 > max {
            return Some((
                "FailureTarget",
                "MaxFailedIndexesExceeded",
                "Job has exceeded the specified maximal number of failed indexes".into(),
            ));
        }
    }
    if let (Some(deadline), Some(start)) = (
        spec["activeDeadlineSeconds"].as_i64(),
        st.status["startTime"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok()),
    ) {
        let left = jiff::SignedDuration::from_secs(deadline) - now_t.duration_since(start);
        if left <= jiff::SignedDuration::ZERO {
            return Some((
                "FailureTarget",
                "DeadlineExceeded",
                "Job was active longer than specified deadline".into(),
            ));
        }
        *requeue = Some(Duration::try_from(left).unwrap_or_default() + Duration::from_millis(10));
    }
    // successPolicy (Indexed): a rule holds when enough of its indexes succeeded.
    for (i, rule) in spec["successPolicy"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let among: BTreeSet<i64> = match rule["succeededIndexes"].as_str() {
            Some(s) => parse_indexes(s),
            None => (0..completions.unwrap_or(0)).collect(),
        };
        let done = st.completed.intersection(&among).count() as i64;
        let need = rule["succeededCount"]
            .as_i64()
            .unwrap_or(among.len() as i64);
        if done >= need && need > 0 {
            return Some((
                "SuccessCriteriaMet",
                "SuccessPolicy",
                format!("Matched rules at index {i}"),
            ));
        }
    }
    let reached = (
        "SuccessCriteriaMet",
        "CompletionsReached",
        "Reached expected number of succeeded pods".to_string(),
    );
    match (indexed, completions) {
        (true, Some(c)) => {
            if st.completed.len() as i64 >= c {
                return Some(reached);
            }
            if !st.failed_indexes.is_empty()
                && (st.completed.len() + st.failed_indexes.len()) as i64 >= c
            {
                return Some((
                    "FailureTarget",
                    "FailedIndexes",
                    "Job has failed indexes".into(),
                ));
            }
        }
        (false, Some(c)) if st.succeeded >= c => return Some(reached),
        // A work queue: done once one pod succeeded and none runs.
        (false, None) if st.succeeded > 0 && st.active.is_empty() => return Some(reached),
        _ => {}
    }
    None
}

/// Creates or deletes pods toward `parallelism` (within what is left to complete); returns
/// how soon to look again if the failure back-off holds creations back.
async fn manage(
    ctx: &Ctx,
    job: &Value,
    st: &mut State,
    completions: Option<i64>,
    parallelism: i64,
    only_failed: bool,
) -> Result<Option<Duration>, ObjectError> {
    let indexed = job["spec"]["completionMode"] == "Indexed";
    let uid = str_at(job, "/metadata/uid");
    // Terminating pods still hold their place when only failed pods are replaced.
    let busy = st.active.len() as i64
        + if only_failed {
            st.terminating.len() as i64
        } else {
            0
        };
    let want: i64 = match (indexed, completions) {
        (true, Some(c)) => {
            parallelism.min(c - st.completed.len() as i64 - st.failed_indexes.len() as i64)
        }
        (false, Some(c)) => parallelism.min(c - st.succeeded),
        (_, None) if st.succeeded > 0 => 0,
        (_, None) => parallelism,
    }
    .max(0);
    if busy > want {
        // Too many (parallelism lowered): the newest go.
        let mut extra: Vec<Arc<Value>> = st.active.clone();
        extra.sort_by(|a, b| {
            str_at(b, "/metadata/creationTimestamp").cmp(str_at(a, "/metadata/creationTimestamp"))
        });
        for p in extra.iter().take((busy - want) as usize) {
            delete_pod(ctx, job, p).await?;
            st.active.retain(|a| !Arc::ptr_eq(a, p));
        }
        return Ok(None);
    }
    let n = want - busy;
    if n <= 0 {
        return Ok(None);
    }
    // Back-off after failures: 10 s, 20 s, 40 s ... since the last failure.
    let failures = if indexed {
        st.index_failures.values().copied().max().unwrap_or(0)
    } else {
        st.failed
    };
    if failures > 0 {
        let delay = ctx
            .backoff_base
            .saturating_mul(2u32.saturating_pow((failures - 1).min(16) as u32))
            .min(BACKOFF_MAX);
        let since = ctx
            .last_failure
            .lock()
            .expect("failures")
            .get(uid)
            .map(|t| t.elapsed());
        if let Some(since) = since.filter(|s| *s < delay) {
            return Ok(Some(delay - since));
        }
    }
    let mut indexes: Vec<Option<i64>> = Vec::new();
    if indexed {
        let taken: BTreeSet<i64> = st
            .active
            .iter()
            .chain(st.terminating.iter().filter(|_| only_failed))
            .filter_map(|p| index_of(p))
            .collect();
        let c = completions.unwrap_or(0);
        indexes.extend(
            (0..c)
                .filter(|i| {
                    !st.completed.contains(i)
                        && !st.failed_indexes.contains(i)
                        && !taken.contains(i)
                })
                .take(n as usize)
                .map(Some),
        );
    } else {
        indexes.extend((0..n).map(|_| None));
    }
    let mut last = 0;
    for index in indexes {
        let pod = pod_for(
            job,
            index,
            index.map(|i| st.index_failures.get(&i).copied().unwrap_or(0)),
        );
        let w = ctx
            .objects
            .create(
                ctx.pods.rt,
                Some(str_at(job, "/metadata/namespace")),
                pod,
                &WriteOptions::default(),
            )
            .await;
        match w {
            Ok(w) => {
                last = last.max(written_rev(&w));
                let created: Value = serde_json::from_slice(&w.object).unwrap_or_default();
                ctx.event(
                    job,
                    EventType::Normal,
                    "SuccessfulCreate",
                    &format!("Created pod: {}", str_at(&created, "/metadata/name")),
                );
                st.active.push(Arc::new(created));
            }
            Err(e) => {
                ctx.event(
                    job,
                    EventType::Warning,
                    "FailedCreate",
                    &format!("Error creating: {e}"),
                );
                return Err(e);
            }
        }
    }
    if last > 0 {
        ctx.pods.wait_for(last).await;
    }
    Ok(None)
}

/// A pod of the job (of `index` for an Indexed job, after `failures` failures of it).
fn pod_for(job: &Value, index: Option<i64>, failures: Option<i64>) -> Value {
    let name = str_at(job, "/metadata/name");
    let prefix = match index {
        Some(i) => pods::pod_name_prefix(&format!("{name}-{i}")),
        None => pods::pod_name_prefix(name),
    };
    let mut pod = pods::from_template(
        &job["spec"]["template"],
        &prefix,
        pods::owner_ref("batch/v1", "Job", job),
    );
    let meta = pod["metadata"].as_object_mut().expect("metadata");
    let fs = meta.entry("finalizers").or_insert_with(|| json!([]));
    if let Some(fs) = fs.as_array_mut() {
        fs.push(json!(FINALIZER));
    }
    if let Some(i) = index {
        pod["metadata"]["annotations"][INDEX] = json!(i.to_string());
        pod["metadata"]["labels"][INDEX] = json!(i.to_string());
        if let Some(f) = failures.filter(|f| *f > 0) {
            pod["metadata"]["annotations"][INDEX_FAILURES] = json!(f.to_string());
        }
        if pod["spec"]["hostname"].is_null() {
            pod["spec"]["hostname"] = json!(format!("{name}-{i}"));
        }
        for list in ["containers", "initContainers"] {
            for c in pod["spec"][list].as_array_mut().into_iter().flatten() {
                let env = c
                    .as_object_mut()
                    .expect("a container")
                    .entry("env")
                    .or_insert_with(|| json!([]));
                if let Some(env) = env.as_array_mut() {
                    env.push(json!({"name": "JOB_COMPLETION_INDEX", "value": i.to_string()}));
                }
            }
        }
    }
    pod
}

/// Sets (or replaces) a condition; the transition time stays while the status does.
fn set_condition(status: &mut Value, type_: &str, value: &str, reason: &str, message: &str) {
    let now = now_string();
    let mut list: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
    let old = list.iter().position(|c| c["type"] == type_);
    let transition = old
        .map(|i| &list[i])
        .filter(|c| c["status"] == value)
        .map_or_else(|| json!(now), |c| c["lastTransitionTime"].clone());
    let cond = json!({"type": type_, "status": value, "reason": reason, "message": message,
                      "lastProbeTime": now, "lastTransitionTime": transition});
    match old {
        Some(i) => list[i] = cond,
        None => list.push(cond),
    }
    status["conditions"] = Value::Array(list);
}

async fn write_status(ctx: &Ctx, job: &Value, status: &Value) -> Result<(), ObjectError> {
    super::update_same(&ctx.objects, &ctx.jobs, job, Target::Status, |_, next| {
        next["status"] = status.clone()
    })
    .await?;
    Ok(())
}

/// `ttlSecondsAfterFinished`: the finished job (and, through the garbage collector, its
/// pods) is deleted that long after it finished.
async fn ttl(ctx: &Ctx, job: &Value, done: &Value) -> Result<Action, ObjectError> {
    let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_i64() else {
        return Ok(Action::Done);
    };
    let finished = done["lastTransitionTime"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .unwrap_or_else(now);
    let left = jiff::SignedDuration::from_secs(ttl) - now().duration_since(finished);
    if left > jiff::SignedDuration::ZERO {
        return Ok(Action::RequeueAfter(
            Duration::try_from(left).unwrap_or_default(),
        ));
    }
    let opts = DeleteOptions {
        propagation_policy: Some("Background".into()),
        precondition_uid: Some(str_at(job, "/metadata/uid").to_string()),
        ..Default::default()
    };
    let (ns, name) = (
        str_at(job, "/metadata/namespace"),
        str_at(job, "/metadata/name"),
    );
    match ctx.objects.delete(ctx.jobs.rt, Some(ns), name, &opts).await {
        Ok(_) | Err(ObjectError::NotFound { .. }) | Err(ObjectError::Conflict { .. }) => {
            Ok(Action::Done)
        }
        Err(e) => Err(e),
    }
}

impl Ctx {
    fn event(&self, job: &Value, type_: EventType, reason: &str, msg: &str) {
        let event = Event {
            type_,
            reason,
            message: msg,
        };
        self.events.publish(job, "Job", event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::testing::{create, eventually, list, objects, rt};

    #[test]
    fn index_sets_are_written_as_ranges() {
        let s: BTreeSet<i64> = [0, 1, 2, 4, 6, 7].into();
        assert_eq!(format_indexes(&s), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4,6-7"), s);
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }

    async fn run(job: Value) -> (Arc<Objects>, tempfile::TempDir) {
        let (objects, d) = objects().await;
        let cache = Cache::new(objects.clone());
        spawn(&cache, Duration::ZERO, &Events::start(objects.clone()));
        crate::controllers::kubelet::spawn(objects.clone());
        create(&objects, "batch", "jobs", job).await;
        (objects, d)
    }

    fn job(name: &str, spec: Value, annotations: Value) -> Value {
        let mut spec = spec;
        spec["template"] = json!({"metadata": {"annotations": annotations}, "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}});
        json!({"metadata": {"name": name}, "spec": spec})
    }

    async fn finished(objects: &Objects, type_: &str) -> Value {
        eventually(&format!("job {type_}"), || async {
            let j = list(objects, "batch", "jobs").await.pop()?;
            condition_true(&j, type_).is_some().then_some(j)
        })
        .await
    }

    fn reason(j: &Value, type_: &str) -> String {
        condition_true(j, type_)
            .map(|c| str_at(c, "/reason").to_string())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn completions_succeed_in_parallel_and_pods_are_released() {
        let (objects, _d) = run(job(
            "ok",
            json!({"completions": 3, "parallelism": 2}),
            json!({"test.skiff.dev/exit": "0"}),
        ))
        .await;
        let j = finished(&objects, "Complete").await;
        assert_eq!(j["status"]["succeeded"], 3);
        assert_eq!(reason(&j, "SuccessCriteriaMet"), "CompletionsReached");
        assert!(j["status"]["completionTime"].is_string());
        let pods = list(&objects, "", "pods").await;
        assert_eq!(pods.len(), 3, "exactly completions pods");
        eventually("finalizers released", || async {
            list(&objects, "", "pods")
                .await
                .iter()
                .all(|p| !has_finalizer(p))
                .then_some(())
        })
        .await;
    }

    #[tokio::test]
    async fn failures_stop_at_the_backoff_limit() {
        let (objects, _d) = run(job(
            "bad",
            json!({"backoffLimit": 2}),
            json!({"test.skiff.dev/exit": "1"}),
        ))
        .await;
        let j = finished(&objects, "Failed").await;
        assert_eq!(reason(&j, "Failed"), "BackoffLimitExceeded");
        assert_eq!(reason(&j, "FailureTarget"), "BackoffLimitExceeded");
        assert_eq!(j["status"]["failed"], 3);
        assert_eq!(list(&objects, "", "pods").await.len(), 3);
    }

    #[tokio::test]
    async fn indexed_jobs_complete_every_index() {
        let (objects, _d) = run(job(
            "idx",
            json!({"completions": 4, "parallelism": 2, "completionMode": "Indexed"}),
            json!({"test.skiff.dev/exit": "0"}),
        ))
        .await;
        let j = finished(&objects, "Complete").await;
        assert_eq!(j["status"]["completedIndexes"], "0-3");
        let pods = list(&objects, "", "pods").await;
        let mut idx: Vec<String> = pods
            .iter()
            .map(|p| {
                str_at(
                    p,
                    "/metadata/labels/batch.kubernetes.io~1job-completion-index",
                )
                .to_string()
            })
            .collect();
        idx.sort();
        assert_eq!(idx, ["0", "1", "2", "3"]);
        let p0 = pods.iter().find(|p| index_of(p) == Some(0)).unwrap();
        assert!(str_at(p0, "/metadata/name").starts_with("idx-0-"));
        assert_eq!(p0["spec"]["hostname"], "idx-0");
        assert_eq!(
            p0["spec"]["containers"][0]["env"][0],
            json!({"name": "JOB_COMPLETION_INDEX", "value": "0"})
        );
    }

    #[tokio::test]
    async fn an_index_that_keeps_failing_fails_alone() {
        let spec = json!({"completions": 4, "parallelism": 4, "completionMode": "Indexed", "backoffLimitPerIndex": 1});
        let (objects, _d) = run(job(
            "per",
            spec,
            json!({"test.skiff.dev/fail-indexes": "2"}),
        ))
        .await;
        let j = finished(&objects, "Failed").await;
        assert_eq!(reason(&j, "Failed"), "FailedIndexes");
        assert_eq!(j["status"]["failedIndexes"], "2");
        assert_eq!(j["status"]["completedIndexes"], "0-1,3");
        let twos = list(&objects, "", "pods")
            .await
            .into_iter()
            .filter(|p| index_of(p) == Some(2))
            .count();
        assert_eq!(twos, 2, "index 2 ran once and was retried once");
    }

    #[tokio::test]
    async fn a_success_policy_ends_the_job_early() {
        let spec = json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed",
            "successPolicy": {"rules": [{"succeededIndexes": "1"}]}});
        // Index 1 succeeds; 0 and 2 fail (and are retried) until the rule holds.
        let (objects, _d) = run(job(
            "sp",
            spec,
            json!({"test.skiff.dev/fail-indexes": "0,2"}),
        ))
        .await;
        let j = finished(&objects, "Complete").await;
        assert_eq!(reason(&j, "SuccessCriteriaMet"), "SuccessPolicy");
        assert_eq!(
            condition_true(&j, "SuccessCriteriaMet").unwrap()["message"],
            "Matched rules at index 0"
        );
    }

    #[tokio::test]
    async fn suspended_jobs_run_nothing_until_resumed_and_deadlines_fail_them() {
        let spec = json!({"suspend": true, "activeDeadlineSeconds": 1, "parallelism": 2, "completions": 2});
        let (objects, _d) = run(job("sus", spec, json!({}))).await;
        let j = eventually("suspended", || async {
            let j = list(&objects, "batch", "jobs").await.pop()?;
            (reason(&j, "Suspended") == "JobSuspended").then_some(j)
        })
        .await;
        assert!(j["status"]["startTime"].is_null());
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(
            list(&objects, "", "pods").await.is_empty(),
            "a suspended job starts no pod, and its deadline waits"
        );
        crate::controllers::testing::edit(
            &objects,
            rt(&objects, "batch", "jobs"),
            Some("default"),
            "sus",
            Target::Main,
            |next| {
                next["spec"]["suspend"] = json!(false);
            },
        )
        .await;
        eventually("two running pods", || async {
            let pods = list(&objects, "", "pods").await;
            (pods
                .iter()
                .filter(|p| str_at(p, "/status/phase") == "Running")
                .count()
                == 2)
                .then_some(())
        })
        .await;
        let j = finished(&objects, "Failed").await;
        assert_eq!(reason(&j, "Failed"), "DeadlineExceeded");
        let resumed = j["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| {
                c["type"] == "Suspended" && c["status"] == "False" && c["reason"] == "JobResumed"
            });
        assert!(resumed, "{j}");
        eventually("pods stopped", || async {
            list(&objects, "", "pods")
                .await
                .iter()
                .all(|p| !pods::is_active(p))
                .then_some(())
        })
        .await;
    }

    #[tokio::test]
    async fn finished_jobs_go_after_their_ttl_and_deleted_jobs_release_pods() {
        let spec = json!({"ttlSecondsAfterFinished": 0});
        let (objects, _d) = run(job("ttl", spec, json!({"test.skiff.dev/exit": "0"}))).await;
        eventually("the job deleted after it finished", || async {
            list(&objects, "batch", "jobs")
                .await
                .is_empty()
                .then_some(())
        })
        .await;
        // A running job deleted: its pod loses the tracking finalizer.
        create(&objects, "batch", "jobs", job("gone", json!({}), json!({}))).await;
        eventually("a running pod", || async {
            let pods = list(&objects, "", "pods").await;
            pods.iter()
                .any(|p| str_at(p, "/metadata/name").starts_with("gone-") && has_finalizer(p))
                .then_some(())
        })
        .await;
        objects
            .delete(
                rt(&objects, "batch", "jobs"),
                Some("default"),
                "gone",
                &DeleteOptions::default(),
            )
            .await
            .unwrap();
        eventually("finalizer removed", || async {
            let pods = list(&objects, "", "pods").await;
            pods.iter()
                .filter(|p| str_at(p, "/metadata/name").starts_with("gone-"))
                .all(|p| !has_finalizer(p))
                .then_some(())
        })
        .await;
    }
}
