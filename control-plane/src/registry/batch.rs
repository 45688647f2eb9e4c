//! batch/v1: Jobs and CronJobs.

use k8s_openapi::api::batch::v1::{CronJob, Job, JobSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

use super::core::{template_cells, CONTAINERS, IMAGES, SELECTOR};
use super::pod::{default_template, validate_template};
use super::table::{self, Column, AGE, NAME};
use super::validation::Errors;
use super::{typed, Base, Kind, Operation, ResourceType, StatusPolicy};
use crate::selectors::label_selector_string;

pub(super) fn register(out: &mut Vec<ResourceType>) {
    let batch = |kind, plural, singular, short: &'static [&'static str], strategy| ResourceType {
        group: "batch",
        short_names: short,
        categories: &["all"],
        subresources: &["status"],
        status: StatusPolicy::Subresource,
        has_spec: true,
        ..Base::core(kind, plural, singular, strategy)
    };
    out.push(batch("Job", "jobs", "job", &[], typed::<Job>()));
    out.push(batch(
        "CronJob",
        "cronjobs",
        "cronjob",
        &["cj"],
        typed::<CronJob>(),
    ));
}

const JOB_RESTART: &[&str] = &["OnFailure", "Never"];

fn default_job_spec(spec: &mut JobSpec, uid: Option<&str>, name: Option<&str>) {
    if spec.completions.is_none() && spec.parallelism.is_none() {
        spec.completions = Some(1);
    }
    spec.parallelism.get_or_insert(1);
    spec.backoff_limit.get_or_insert(6);
    spec.completion_mode
        .get_or_insert_with(|| "NonIndexed".into());
    spec.suspend.get_or_insert(false);
    spec.pod_replacement_policy
        .get_or_insert_with(|| "TerminatingOrFailed".into());
    spec.manual_selector.get_or_insert(false);
    // Without a manual selector the Job selects its pods by its own uid.
    if let (Some(uid), false) = (uid, spec.manual_selector.unwrap_or(false)) {
        if spec.selector.is_none() {
            spec.selector = Some(LabelSelector {
                match_labels: Some(
                    [(
                        "batch.kubernetes.io/controller-uid".to_string(),
                        uid.to_string(),
                    )]
                    .into(),
                ),
                match_expressions: None,
            });
            let labels = spec
                .template
                .metadata
                .get_or_insert_with(Default::default)
                .labels
                .get_or_insert_with(Default::default);
            labels.insert("batch.kubernetes.io/controller-uid".into(), uid.into());
            labels.insert("controller-uid".into(), uid.into());
            if let Some(n) = name {
                labels.insert("batch.kubernetes.io/job-name".into(), n.into());
                labels.insert("job-name".into(), n.into());
            }
        }
    }
    default_template(Some(&mut spec.template));
}

fn validate_job_spec(spec: &JobSpec, path: &str, errs: &mut Errors) {
    for (field, v) in [
        ("parallelism", spec.parallelism),
        ("completions", spec.completions),
        ("backoffLimit", spec.backoff_limit),
    ] {
        if let Some(v) = v.filter(|v| *v < 0) {
            errs.invalid(
                format!("{path}.{field}"),
                v,
                "must be greater than or equal to 0",
            );
        }
    }
    if let Some(d) = spec.active_deadline_seconds.filter(|d| *d <= 0) {
        errs.invalid(
            format!("{path}.activeDeadlineSeconds"),
            d,
            "must be greater than or equal to 0",
        );
    }
    errs.one_of(
        format!("{path}.completionMode"),
        spec.completion_mode.as_deref(),
        &["NonIndexed", "Indexed"],
        false,
    );
    if spec.selector.is_some() {
        validate_template(
            spec.selector.as_ref(),
            Some(&spec.template),
            path,
            JOB_RESTART,
            errs,
        );
    } else if let Some(s) = &spec.template.spec {
        super::pod::validate_pod_spec(s, &format!("{path}.template.spec"), errs);
        if let Some(p) = s
            .restart_policy
            .as_deref()
            .filter(|p| !JOB_RESTART.contains(p))
        {
            errs.not_supported(
                format!("{path}.template.spec.restartPolicy"),
                p,
                JOB_RESTART,
            );
        }
    }
}

fn condition(job: &Job, ty: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == ty && c.status == "True"))
}

const JOB_COLUMNS: &[Column] = &[
    NAME,
    Column::new("Status", "string", "Status of the job."),
    Column::new("Completions", "string", "The completed job replicas."),
    Column::new("Duration", "string", "Time required to complete the job."),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

impl Kind for Job {
    fn default_fields(&mut self, op: Operation) {
        let uid = self.metadata.uid.clone();
        let name = self.metadata.name.clone();
        let spec = self.spec.get_or_insert_with(Default::default);
        default_job_spec(
            spec,
            if op == Operation::Create {
                uid.as_deref()
            } else {
                None
            },
            name.as_deref(),
        );
    }
    fn validate(&self, errs: &mut Errors) {
        match &self.spec {
            Some(spec) => validate_job_spec(spec, "spec", errs),
            None => errs.required("spec"),
        }
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        if let (Some(n), Some(o)) = (&self.spec, &old.spec) {
            if n.selector != o.selector {
                errs.invalid(
                    "spec.selector",
                    serde_json::to_string(&n.selector).unwrap_or_default(),
                    "field is immutable",
                );
            }
            if n.template != o.template && o.suspend != Some(true) {
                errs.invalid("spec.template", "{...}", "field is immutable");
            }
        }
    }
    fn columns() -> &'static [Column] {
        JOB_COLUMNS
    }
    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let succeeded = status.succeeded.unwrap_or(0);
        let completions = match spec.completions {
            Some(c) => format!("{succeeded}/{c}"),
            None => format!("{succeeded}/1 of {}", spec.parallelism.unwrap_or(1)),
        };
        let duration = match (status.start_time.as_ref(), status.completion_time.as_ref()) {
            (Some(s), Some(c)) => table::human_duration(c.0.as_second() - s.0.as_second()),
            (Some(s), None) => table::human_duration(now.as_second() - s.0.as_second()),
            _ => String::new(),
        };
        let state = if self.metadata.deletion_timestamp.is_some() {
            "Terminating"
        } else if condition(self, "Complete") {
            "Complete"
        } else if condition(self, "Failed") {
            "Failed"
        } else if condition(self, "FailureTarget") {
            "FailureTarget"
        } else if condition(self, "SuccessCriteriaMet") {
            "SuccessCriteriaMet"
        } else if condition(self, "Suspended") {
            "Suspended"
        } else {
            "Running"
        };
        let [c, i] = template_cells(Some(&spec.template));
        vec![
            table::name(&self.metadata),
            state.into(),
            completions.into(),
            duration.into(),
            table::age(self.meta_created(), now),
            c,
            i,
            spec.selector
                .as_ref()
                .map(label_selector_string)
                .unwrap_or_else(|| "<none>".into())
                .into(),
        ]
    }
}

const CRONJOB_COLUMNS: &[Column] = &[
    NAME,
    Column::new("Schedule", "string", "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron."),
    Column::new("Timezone", "string", "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones."),
    Column::new("Suspend", "boolean", "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions.  Defaults to false."),
    Column::new("Active", "integer", "A list of pointers to currently running jobs."),
    Column::new("Last Schedule", "string", "Information when was the last time the job was successfully scheduled."),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

impl Kind for CronJob {
    fn default_fields(&mut self, _op: Operation) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.concurrency_policy
            .get_or_insert_with(|| "Allow".into());
        spec.suspend.get_or_insert(false);
        spec.successful_jobs_history_limit.get_or_insert(3);
        spec.failed_jobs_history_limit.get_or_insert(1);
        if let Some(js) = spec.job_template.spec.as_mut() {
            default_job_spec(js, None, None);
        }
    }
    fn validate(&self, errs: &mut Errors) {
        let Some(spec) = &self.spec else {
            return errs.required("spec");
        };
        if spec.schedule.is_empty() {
            errs.required("spec.schedule");
        } else if spec.schedule.contains("TZ") {
            errs.invalid_str(
                "spec.schedule",
                &spec.schedule,
                format!("CRON_TZ or TZ used in spec.schedule \"{}\" is not officially supported, see https://kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/ for more details", spec.schedule),
            );
        } else if let Err(msg) = crate::cron::Schedule::parse(&spec.schedule) {
            errs.invalid_str("spec.schedule", &spec.schedule, msg);
        }
        if let Some(tz) = spec.time_zone.as_deref() {
            if jiff::tz::TimeZone::get(tz).is_err() || tz.is_empty() {
                errs.invalid_str("spec.timeZone", tz, format!("unknown time zone {tz}"));
            }
        }
        errs.one_of(
            "spec.concurrencyPolicy",
            spec.concurrency_policy.as_deref(),
            &["Allow", "Forbid", "Replace"],
            true,
        );
        match &spec.job_template.spec {
            Some(js) => validate_job_spec(js, "spec.jobTemplate.spec", errs),
            None => errs.required("spec.jobTemplate.spec"),
        }
    }
    fn columns() -> &'static [Column] {
        CRONJOB_COLUMNS
    }
    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let js = spec.job_template.spec.clone().unwrap_or_default();
        let [c, i] = template_cells(Some(&js.template));
        let last = status
            .last_schedule_time
            .as_ref()
            .map(|t| table::since(Some(t.0), now))
            .unwrap_or_else(|| "<none>".into());
        vec![
            table::name(&self.metadata),
            spec.schedule.clone().into(),
            spec.time_zone
                .clone()
                .unwrap_or_else(|| "<none>".into())
                .into(),
            spec.suspend.unwrap_or(false).into(),
            status.active.as_ref().map_or(0, Vec::len).into(),
            last.into(),
            table::age(self.meta_created(), now),
            c,
            i,
            js.selector
                .as_ref()
                .map(label_selector_string)
                .unwrap_or_else(|| "<none>".into())
                .into(),
        ]
    }
}
