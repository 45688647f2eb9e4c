//! CronJobs, as kube-controller-manager's cronjob controller (v2): at each scheduled time
//! (in `timeZone`, else the control plane's) a Job `<name>-<minutes since the epoch>` is
//! created from the template; a time missed by more than `startingDeadlineSeconds` is
//! skipped; `concurrencyPolicy` Allow, Forbid (skip while one runs) or Replace (delete the
//! running one); `suspend`; finished Jobs beyond `successfulJobsHistoryLimit` /
//! `failedJobsHistoryLimit` are deleted; `status.active`, `lastScheduleTime` and
//! `lastSuccessfulTime` as kube reports them.

use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use serde_json::{json, Value};

use super::pods::{self, str_at};
use crate::cron::Schedule;
use crate::events::{Event, Events, Recorder};
use crate::objects::{DeleteOptions, ObjectError, Objects, Target, WriteOptions};
use crate::runtime::{self, cache, written_rev, Action, Cache, Informer, Queue};

const COMPONENT: &str = "cronjob-controller";
const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// More missed times than this are not worth listing (kube says so in an event).
const TOO_MANY_MISSED: usize = 100;

type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

struct Ctx {
    objects: Arc<Objects>,
    cronjobs: Arc<Informer>,
    jobs: Arc<Informer>,
    clock: Clock,
    events: Recorder,
}

pub fn spawn(cache: &Arc<Cache>, events: &Arc<Events>) {
    spawn_with_clock(cache, events, Arc::new(Timestamp::now));
}

fn context(cache: &Arc<Cache>, events: &Arc<Events>, clock: Clock) -> Arc<Ctx> {
    Arc::new(Ctx {
        objects: cache.objects().clone(),
        cronjobs: cache.of("batch", "v1", "cronjobs"),
        jobs: cache.of("batch", "v1", "jobs"),
        clock,
        events: events.recorder(COMPONENT),
    })
}

fn spawn_with_clock(cache: &Arc<Cache>, events: &Arc<Events>, clock: Clock) -> Arc<Ctx> {
    let ctx = context(cache, events, clock);
    let queue = Queue::new();
    runtime::queue_changes(&ctx.cronjobs, &queue);
    super::queue_controllers(&ctx.jobs, "CronJob", &queue);
    let c = ctx.clone();
    runtime::spawn_controller(COMPONENT, queue, move |key| reconcile(c.clone(), key));
    ctx
}

fn finished(job: &Value) -> Option<&str> {
    job.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
        .and_then(|c| c["type"].as_str())
}

fn parse_time(v: &Value) -> Option<Timestamp> {
    v.as_str()?.parse().ok()
}

/// RFC 3339 at second precision, as Kubernetes writes times.
fn seconds(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

async fn reconcile(ctx: Arc<Ctx>, key: String) -> Result<Action, ObjectError> {
    let (ns, name) = cache::split_key(&key);
    let Some(cj) = ctx.cronjobs.get(ns, name) else {
        return Ok(Action::Done);
    };
    if pods::is_terminating(&cj) {
        return Ok(Action::Done);
    }
    let ns = ns.unwrap_or_default();
    let uid = str_at(&cj, "/metadata/uid");
    let spec = &cj["spec"];
    let mut jobs: Vec<Arc<Value>> = ctx
        .jobs
        .list(Some(ns))
        .into_iter()
        .filter(|j| pods::controlled_by(j, uid))
        .collect();
    jobs.sort_by(|a, b| {
        str_at(a, "/metadata/creationTimestamp").cmp(str_at(b, "/metadata/creationTimestamp"))
    });
    let mut status = cj.get("status").cloned().unwrap_or_else(|| json!({}));
    let was_active: Vec<String> = status["active"]
        .as_array()
        .map(|a| a.iter().map(|r| str_at(r, "/uid").to_string()).collect())
        .unwrap_or_default();
    let mut active = Vec::new();
    for j in &jobs {
        let jname = str_at(j, "/metadata/name");
        match finished(j) {
            None if !pods::is_terminating(j) => active.push(job_ref(j)),
            None => {}
            Some(how) => {
                if was_active.iter().any(|u| u == str_at(j, "/metadata/uid")) {
                    let msg = format!("Saw completed job: {jname}, status: {how}");
                    ctx.events
                        .publish(&cj, "CronJob", Event::normal("SawCompletedJob", &msg));
                }
                if how == "Complete" {
                    let done = &j["status"]["completionTime"];
                    if parse_time(done) > parse_time(&status["lastSuccessfulTime"]) {
                        status["lastSuccessfulTime"] = done.clone();
                    }
                }
            }
        }
    }
    // History limits: the oldest finished Jobs beyond them go.
    for (how, limit) in [
        (
            "Complete",
            spec["successfulJobsHistoryLimit"].as_i64().unwrap_or(3),
        ),
        (
            "Failed",
            spec["failedJobsHistoryLimit"].as_i64().unwrap_or(1),
        ),
    ] {
        let done: Vec<&Arc<Value>> = jobs
            .iter()
            .filter(|j| finished(j) == Some(how) && !pods::is_terminating(j))
            .collect();
        let surplus = done.len().saturating_sub(limit.max(0) as usize);
        for j in done.into_iter().take(surplus) {
            delete_job(&ctx, &cj, j).await?;
        }
    }
    let tz = match spec["timeZone"].as_str() {
        Some(tz) => match TimeZone::get(tz) {
            Ok(tz) => tz,
            Err(_) => {
                let msg = format!("invalid timeZone: {tz:?}");
                ctx.events
                    .publish(&cj, "CronJob", Event::warning("UnknownTimeZone", &msg));
                return write_status(&ctx, &cj, status, active)
                    .await
                    .map(|_| Action::Done);
            }
        },
        None => TimeZone::system(),
    };
    let schedule = match Schedule::parse(str_at(&cj, "/spec/schedule")) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("invalid schedule: {}: {e}", str_at(&cj, "/spec/schedule"));
            ctx.events
                .publish(&cj, "CronJob", Event::warning("InvalidSchedule", &msg));
            return write_status(&ctx, &cj, status, active)
                .await
                .map(|_| Action::Done);
        }
    };
    let now = Zoned::new((ctx.clock)(), tz.clone());
    let next_wake = |from: &Zoned| {
        schedule.next_after(from).map(|n| {
            let d = n.timestamp().duration_since(now.timestamp());
            Duration::try_from(d).unwrap_or_default() + Duration::from_millis(100)
        })
    };
    if spec["suspend"] == true {
        write_status(&ctx, &cj, status, active).await?;
        return Ok(Action::Done);
    }
    // The most recent scheduled time not yet run.
    let since = parse_time(&status["lastScheduleTime"])
        .or_else(|| parse_time(&cj["metadata"]["creationTimestamp"]))
        .unwrap_or(now.timestamp());
    let mut earliest = Zoned::new(since, tz.clone());
    let deadline = spec["startingDeadlineSeconds"].as_i64();
    if let Some(d) = deadline {
        let floor = now.timestamp() - jiff::SignedDuration::from_secs(d);
        if floor > earliest.timestamp() {
            earliest = Zoned::new(floor, tz.clone());
        }
    }
    let mut due: Option<Zoned> = None;
    let mut missed = 0;
    let mut t = earliest;
    while let Some(n) = schedule.next_after(&t) {
        if n.timestamp() > now.timestamp() {
            break;
        }
        missed += 1;
        t = n.clone();
        due = Some(n);
        if missed > 10_000 {
            break;
        }
    }
    let Some(scheduled) = due else {
        write_status(&ctx, &cj, status, active).await?;
        return Ok(next_wake(&now).map_or(Action::Done, Action::RequeueAfter));
    };
    if missed > TOO_MANY_MISSED {
        let msg = format!("too many missed start times: {missed}. Set or decrease .spec.startingDeadlineSeconds or check clock skew");
        ctx.events
            .publish(&cj, "CronJob", Event::warning("TooManyMissedTimes", &msg));
    }
    let requeue = next_wake(&now).map_or(Action::Done, Action::RequeueAfter);
    if let Some(d) = deadline {
        if scheduled.timestamp() + jiff::SignedDuration::from_secs(d) < now.timestamp() {
            let msg = format!(
                "Missed scheduled time to start a job: {}",
                seconds(scheduled.timestamp())
            );
            ctx.events
                .publish(&cj, "CronJob", Event::warning("MissSchedule", &msg));
            write_status(&ctx, &cj, status, active).await?;
            return Ok(requeue);
        }
    }
    let job_name = format!("{name}-{}", scheduled.timestamp().as_second() / 60);
    let already = jobs.iter().any(|j| str_at(j, "/metadata/name") == job_name);
    match spec["concurrencyPolicy"].as_str().unwrap_or("Allow") {
        _ if already => {}
        "Forbid" if !active.is_empty() => {
            let msg = "Not starting job because prior execution is running and concurrency policy is Forbid";
            ctx.events
                .publish(&cj, "CronJob", Event::normal("JobAlreadyActive", msg));
            write_status(&ctx, &cj, status, active).await?;
            return Ok(requeue);
        }
        "Replace" if !active.is_empty() => {
            for j in jobs
                .iter()
                .filter(|j| finished(j).is_none() && !pods::is_terminating(j))
            {
                delete_job(&ctx, &cj, j).await?;
            }
            active.clear();
        }
        _ => {}
    }
    if !already {
        let template = &spec["jobTemplate"];
        let mut job = json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {
                "name": job_name,
                "labels": template["metadata"]["labels"].clone(),
                "annotations": template["metadata"]["annotations"].clone(),
                "ownerReferences": [pods::owner_ref("batch/v1", "CronJob", &cj)],
            },
            "spec": template["spec"].clone(),
        });
        let meta = job["metadata"].as_object_mut().expect("metadata");
        meta.retain(|_, v| !v.is_null());
        let a = meta.entry("annotations").or_insert_with(|| json!({}));
        a[SCHEDULED_AT] = json!(scheduled.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string());
        match ctx
            .objects
            .create(ctx.jobs.rt, Some(ns), job, &WriteOptions::default())
            .await
        {
            Ok(w) => {
                let created: Value = serde_json::from_slice(&w.object).unwrap_or_default();
                let msg = format!("Created job {job_name}");
                ctx.events
                    .publish(&cj, "CronJob", Event::normal("SuccessfulCreate", &msg));
                active.push(job_ref(&created));
                ctx.jobs.wait_for(written_rev(&w)).await;
            }
            Err(ObjectError::AlreadyExists { .. }) => {}
            Err(e) => {
                let msg = format!("Error creating job: {e}");
                ctx.events
                    .publish(&cj, "CronJob", Event::warning("FailedCreate", &msg));
                return Err(e);
            }
        }
    }
    status["lastScheduleTime"] = json!(seconds(scheduled.timestamp()));
    write_status(&ctx, &cj, status, active).await?;
    Ok(requeue)
}

fn job_ref(j: &Value) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job", "name": j["metadata"]["name"],
           "namespace": j["metadata"]["namespace"], "uid": j["metadata"]["uid"],
           "resourceVersion": j["metadata"]["resourceVersion"]})
}

async fn delete_job(ctx: &Ctx, cj: &Value, j: &Value) -> Result<(), ObjectError> {
    let opts = DeleteOptions {
        propagation_policy: Some("Background".into()),
        precondition_uid: Some(str_at(j, "/metadata/uid").to_string()),
        ..Default::default()
    };
    let (ns, name) = (
        str_at(j, "/metadata/namespace"),
        str_at(j, "/metadata/name"),
    );
    match ctx.objects.delete(ctx.jobs.rt, Some(ns), name, &opts).await {
        Ok(_) => {
            let msg = format!("Deleted job {name}");
            ctx.events
                .publish(cj, "CronJob", Event::normal("SuccessfulDelete", &msg));
            Ok(())
        }
        Err(ObjectError::NotFound { .. }) | Err(ObjectError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn write_status(
    ctx: &Ctx,
    cj: &Value,
    mut status: Value,
    active: Vec<Value>,
) -> Result<(), ObjectError> {
    // The references compare without their resourceVersions (those move with every
    // status write of the Job).
    let uids = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|r| str_at(r, "/uid").to_string()).collect())
            .unwrap_or_default()
    };
    if uids(&status["active"]) != uids(&json!(active)) {
        if active.is_empty() {
            status.as_object_mut().map(|s| s.remove("active"));
        } else {
            status["active"] = Value::Array(active);
        }
    }
    if cj.get("status") == Some(&status) || (cj.get("status").is_none() && status == json!({})) {
        return Ok(());
    }
    super::update_same(
        &ctx.objects,
        &ctx.cronjobs,
        cj,
        Target::Status,
        |_, next| next["status"] = status.clone(),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::testing::{create, list, objects, rt};
    use std::sync::atomic::{AtomicI64, Ordering};

    struct Fixture {
        objects: Arc<Objects>,
        ctx: Arc<Ctx>,
        now: Arc<AtomicI64>,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        async fn new(spec: Value) -> Fixture {
            let (objects, dir) = objects().await;
            let cache = Cache::new(objects.clone());
            let now = Arc::new(AtomicI64::new(0));
            let n = now.clone();
            let ctx = context(
                &cache,
                &Events::start(objects.clone()),
                Arc::new(move || Timestamp::from_second(n.load(Ordering::SeqCst)).unwrap()),
            );
            let mut spec = spec;
            spec["jobTemplate"] = json!({"metadata": {"labels": {"from": "cron"}}, "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}});
            let cj = create(
                &objects,
                "batch",
                "cronjobs",
                json!({"metadata": {"name": "tick"}, "spec": spec}),
            )
            .await;
            let created: Timestamp = cj["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            now.store(created.as_second(), Ordering::SeqCst);
            ctx.cronjobs.synced().await;
            ctx.jobs.synced().await;
            let f = Fixture {
                objects,
                ctx,
                now,
                _dir: dir,
            };
            f.settle().await;
            f
        }

        /// Lets the cache catch up with every write so far.
        async fn settle(&self) {
            // Until both informers hold what the store holds.
            let rvs = |items: Vec<Value>| -> Vec<String> {
                let mut v: Vec<String> = items
                    .iter()
                    .map(|o| str_at(o, "/metadata/resourceVersion").to_string())
                    .collect();
                v.sort();
                v
            };
            for _ in 0..500 {
                let cached =
                    |i: &Informer| rvs(i.list(None).iter().map(|v| (**v).clone()).collect());
                if cached(&self.ctx.jobs) == rvs(list(&self.objects, "batch", "jobs").await)
                    && cached(&self.ctx.cronjobs)
                        == rvs(list(&self.objects, "batch", "cronjobs").await)
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the cache did not catch up");
        }

        /// Moves the clock to the next time the schedule fires, plus `extra` seconds, and
        /// reconciles.
        async fn tick(&self, schedule: &str, extra: i64) -> Action {
            let now = Zoned::new(
                Timestamp::from_second(self.now.load(Ordering::SeqCst)).unwrap(),
                TimeZone::UTC,
            );
            let next = Schedule::parse(schedule).unwrap().next_after(&now).unwrap();
            self.now
                .store(next.timestamp().as_second() + extra, Ordering::SeqCst);
            self.reconcile().await
        }

        async fn reconcile(&self) -> Action {
            let a = reconcile(self.ctx.clone(), "default/tick".into())
                .await
                .unwrap();
            self.settle().await;
            a
        }

        async fn jobs(&self) -> Vec<Value> {
            list(&self.objects, "batch", "jobs").await
        }

        async fn cronjob(&self) -> Value {
            list(&self.objects, "batch", "cronjobs").await.remove(0)
        }

        async fn finish(&self, name: &str, how: &str) {
            let rt = rt(&self.objects, "batch", "jobs");
            let now = seconds(Timestamp::from_second(self.now.load(Ordering::SeqCst)).unwrap());
            crate::controllers::testing::edit(
                &self.objects,
                rt,
                Some("default"),
                name,
                Target::Status,
                |next| {
                    next["status"]["conditions"] = json!([{"type": how, "status": "True"}]);
                    next["status"]["completionTime"] = json!(now);
                },
            )
            .await;
            self.settle().await;
        }
    }

    #[tokio::test]
    async fn fires_at_each_scheduled_time_once() {
        let f = Fixture::new(json!({"schedule": "*/5 * * * *", "timeZone": "UTC"})).await;
        assert!(matches!(f.reconcile().await, Action::RequeueAfter(_)));
        assert!(
            f.jobs().await.is_empty(),
            "nothing before the first scheduled time"
        );
        f.tick("*/5 * * * *", 10).await;
        let jobs = f.jobs().await;
        assert_eq!(jobs.len(), 1);
        let at = f.now.load(Ordering::SeqCst) - 10;
        assert_eq!(jobs[0]["metadata"]["name"], format!("tick-{}", at / 60));
        assert_eq!(jobs[0]["metadata"]["labels"]["from"], "cron");
        assert!(jobs[0]["metadata"]["annotations"][SCHEDULED_AT]
            .as_str()
            .unwrap()
            .ends_with("+00:00"));
        let cj = f.cronjob().await;
        assert_eq!(
            cj["status"]["active"][0]["name"],
            jobs[0]["metadata"]["name"]
        );
        assert_eq!(
            cj["status"]["lastScheduleTime"],
            seconds(Timestamp::from_second(at).unwrap())
        );
        f.reconcile().await;
        assert_eq!(f.jobs().await.len(), 1, "the same time does not fire twice");
        // Completed: the status says so; the history keeps 3 successful jobs.
        for _ in 0..4 {
            let name = f
                .jobs()
                .await
                .iter()
                .find(|j| finished(j).is_none())
                .map(|j| str_at(j, "/metadata/name").to_string());
            if let Some(n) = name {
                f.finish(&n, "Complete").await;
            }
            f.tick("*/5 * * * *", 1).await;
        }
        f.reconcile().await;
        let jobs = f.jobs().await;
        assert_eq!(
            jobs.iter()
                .filter(|j| finished(j) == Some("Complete"))
                .count(),
            3,
            "{jobs:#?}"
        );
        assert!(f.cronjob().await["status"]["lastSuccessfulTime"].is_string());
    }

    #[tokio::test]
    async fn forbid_skips_while_one_runs_and_replace_replaces_it() {
        let f = Fixture::new(json!({"schedule": "* * * * *", "concurrencyPolicy": "Forbid"})).await;
        f.tick("* * * * *", 1).await;
        f.tick("* * * * *", 1).await;
        assert_eq!(f.jobs().await.len(), 1, "Forbid: the second run waits");
        let crt = rt(&f.objects, "batch", "cronjobs");
        crate::controllers::testing::edit(
            &f.objects,
            crt,
            Some("default"),
            "tick",
            Target::Main,
            |next| {
                next["spec"]["concurrencyPolicy"] = json!("Replace");
            },
        )
        .await;
        f.settle().await;
        let first = str_at(&f.jobs().await[0], "/metadata/name").to_string();
        f.tick("* * * * *", 1).await;
        let jobs = f.jobs().await;
        let live: Vec<&Value> = jobs.iter().filter(|j| !pods::is_terminating(j)).collect();
        assert_eq!(live.len(), 1);
        assert_ne!(
            str_at(live[0], "/metadata/name"),
            first,
            "Replace: the running job went"
        );
    }

    #[tokio::test]
    async fn missed_times_past_the_deadline_are_skipped_and_time_zones_count() {
        let f = Fixture::new(json!({"schedule": "0 * * * *", "startingDeadlineSeconds": 30})).await;
        f.tick("0 * * * *", 120).await;
        assert!(
            f.jobs().await.is_empty(),
            "two minutes late with a 30 s deadline"
        );
        f.tick("0 * * * *", 5).await;
        assert_eq!(f.jobs().await.len(), 1);

        let g = Fixture::new(json!({"schedule": "30 12 * * *", "timeZone": "Asia/Kolkata"})).await;
        // 12:30 in Kolkata is 07:00 UTC.
        let now = Zoned::new(
            Timestamp::from_second(g.now.load(Ordering::SeqCst)).unwrap(),
            TimeZone::get("Asia/Kolkata").unwrap(),
        );
        let next = Schedule::parse("30 12 * * *")
            .unwrap()
            .next_after(&now)
            .unwrap();
        g.now
            .store(next.timestamp().as_second() + 1, Ordering::SeqCst);
        g.reconcile().await;
        let jobs = g.jobs().await;
        assert_eq!(jobs.len(), 1);
        assert_eq!(next.timestamp().strftime("%H:%M").to_string(), "07:00");
        assert!(jobs[0]["metadata"]["annotations"][SCHEDULED_AT]
            .as_str()
            .unwrap()
            .ends_with("12:30:00+05:30"));
    }
}
