//! Unit tests of the write path against a real sled store: defaulting and zero statuses,
//! validation, conflicts, finalizers, binding, deletion, apply, lists, admission.

use super::*;
use crate::store::SledStore;
use serde_json::json;

async fn setup() -> (Objects, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path(), 1000).unwrap());
    let objects = Objects::new(store, Arc::new(Registry::new()));
    let ns = objects.registry().find("", "v1", "namespaces").unwrap();
    objects
        .create(
            ns,
            None,
            json!({"metadata": {"name": "default"}}),
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    (objects, dir)
}

fn rt<'a>(o: &'a Objects, group: &str, plural: &str) -> &'a ResourceType {
    o.registry()
        .resources
        .iter()
        .find(|r| r.group == group && r.plural == plural)
        .unwrap()
}

fn v(b: &Bytes) -> Value {
    serde_json::from_slice(b).unwrap()
}

fn deployment(image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": image}]}}}})
}

#[tokio::test]
async fn create_fills_system_metadata_and_defaults() {
    let (o, _d) = setup().await;
    let d = rt(&o, "apps", "deployments");
    let w = o
        .create(
            d,
            Some("default"),
            deployment("nginx:1"),
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    let obj = v(&w.object);
    assert_eq!(obj["metadata"]["generation"], 1);
    assert_eq!(obj["metadata"]["namespace"], "default");
    assert!(obj["metadata"]["uid"].as_str().unwrap().len() == 36);
    assert_eq!(obj["spec"]["replicas"], 1);
    assert_eq!(obj["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    let err = o
        .create(
            d,
            Some("default"),
            deployment("nginx:1"),
            &WriteOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "deployments.apps \"web\" already exists");
    let err = o
        .create(
            d,
            Some("nope"),
            deployment("nginx:1"),
            &WriteOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "namespaces \"nope\" not found");
}

/// kube's PrepareForCreate resets status to the zero value, which it always serializes:
/// clients read `status` straight after a create (the Python client's `test_service_apis`
/// failed on a Service created without one).
#[tokio::test]
async fn created_objects_answer_with_kubes_zero_status() {
    let (o, _d) = setup().await;
    let tpl = json!({"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
    let sel = json!({"matchLabels": {"app": "a"}});
    let cases = [
        (
            "",
            "services",
            json!({"spec": {"ports": [{"port": 80}]}, "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}}),
            json!({"loadBalancer": {}}),
        ),
        (
            "",
            "replicationcontrollers",
            json!({"spec": {"selector": {"app": "a"}, "template": tpl}}),
            json!({"replicas": 0}),
        ),
        (
            "apps",
            "deployments",
            json!({"spec": {"selector": sel, "template": tpl}}),
            json!({}),
        ),
        (
            "apps",
            "replicasets",
            json!({"spec": {"selector": sel, "template": tpl}}),
            json!({"replicas": 0}),
        ),
        (
            "apps",
            "daemonsets",
            json!({"spec": {"selector": sel, "template": tpl}}),
            json!({"currentNumberScheduled": 0, "numberMisscheduled": 0, "desiredNumberScheduled": 0, "numberReady": 0}),
        ),
        (
            "batch",
            "jobs",
            json!({"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}}),
            json!({}),
        ),
        (
            "batch",
            "cronjobs",
            json!({"spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}}}}),
            json!({}),
        ),
    ];
    for (group, plural, mut body, want) in cases {
        body["metadata"]["name"] = json!("a");
        let w = o
            .create(
                rt(&o, group, plural),
                Some("default"),
                body,
                &WriteOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{plural}: {e}"));
        assert_eq!(v(&w.object)["status"], want, "{plural}");
    }
}

/// A node's status as kube keeps it: allocatable defaults to capacity
/// (`SetDefaults_NodeStatus`), and the structs Go always serializes are there.
#[tokio::test]
async fn nodes_answer_with_kubes_status_defaults() {
    let (o, _d) = setup().await;
    let node =
        json!({"metadata": {"name": "n"}, "status": {"capacity": {"cpu": "2", "pods": "110"}}});
    let w = o
        .create(rt(&o, "", "nodes"), None, node, &WriteOptions::default())
        .await
        .unwrap();
    let status = &v(&w.object)["status"];
    assert_eq!(status["allocatable"], json!({"cpu": "2", "pods": "110"}));
    assert_eq!(
        status["daemonEndpoints"],
        json!({"kubeletEndpoint": {"Port": 0}})
    );
    assert_eq!(status["nodeInfo"]["machineID"], json!(""));
    assert_eq!(status["nodeInfo"]["kubeletVersion"], json!(""));
    // What the node says it can allocate stays its own.
    let node = json!({"metadata": {"name": "m"}, "status": {"capacity": {"cpu": "2"}, "allocatable": {"cpu": "1500m"}}});
    let w = o
        .create(rt(&o, "", "nodes"), None, node, &WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(
        v(&w.object)["status"]["allocatable"],
        json!({"cpu": "1500m"})
    );
}

#[tokio::test]
async fn invalid_and_unknown_fields() {
    let (o, _d) = setup().await;
    let p = rt(&o, "", "pods");
    let bad = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}});
    let err = o
        .create(p, Some("default"), bad, &WriteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Pod \"p\" is invalid: spec.containers[0].image: Required value"
    );
    let unknown = json!({"metadata": {"name": "p"}, "spec": {"bogus": 1, "containers": [{"name": "c", "image": "x", "imagex": 2}]}});
    let strict = WriteOptions {
        validation: FieldValidation::Strict,
        ..Default::default()
    };
    let err = o
        .create(p, Some("default"), unknown.clone(), &strict)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "Pod in version \"v1\" cannot be handled as a Pod: strict decoding error: unknown field \"spec.bogus\", unknown field \"spec.containers[0].imagex\"");
    let w = o
        .create(p, Some("default"), unknown, &WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(w.warnings.len(), 2);
}

#[tokio::test]
async fn generation_tracks_spec_only_and_stale_updates_conflict() {
    let (o, _d) = setup().await;
    let d = rt(&o, "apps", "deployments");
    let first = v(&o
        .create(
            d,
            Some("default"),
            deployment("nginx:1"),
            &WriteOptions::default(),
        )
        .await
        .unwrap()
        .object);
    let mut labels = first.clone();
    labels["metadata"]["labels"]["x"] = json!("y");
    let second = v(&o
        .update(
            d,
            Some("default"),
            "web",
            labels,
            Target::Main,
            &WriteOptions::default(),
        )
        .await
        .unwrap()
        .object);
    assert_eq!(second["metadata"]["generation"], 1);
    let mut image = first.clone();
    image["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:2");
    let err = o
        .update(
            d,
            Some("default"),
            "web",
            image.clone(),
            Target::Main,
            &WriteOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ObjectError::Conflict { .. }), "{err}");
    image["metadata"]["resourceVersion"] = second["metadata"]["resourceVersion"].clone();
    let third = v(&o
        .update(
            d,
            Some("default"),
            "web",
            image,
            Target::Main,
            &WriteOptions::default(),
        )
        .await
        .unwrap()
        .object);
    assert_eq!(third["metadata"]["generation"], 2);
    // Status writes go through /status only, and do not bump generation.
    let mut st = third.clone();
    st["status"] = json!({"replicas": 3});
    let fourth = v(&o
        .update(
            d,
            Some("default"),
            "web",
            st.clone(),
            Target::Main,
            &WriteOptions::default(),
        )
        .await
        .unwrap()
        .object);
    // The main resource keeps the status a create gave it: empty, as in kube.
    assert_eq!(fourth["status"], json!({}));
    st["metadata"]["resourceVersion"] = fourth["metadata"]["resourceVersion"].clone();
    let fifth = v(&o
        .update(
            d,
            Some("default"),
            "web",
            st,
            Target::Status,
            &WriteOptions::default(),
        )
        .await
        .unwrap()
        .object);
    assert_eq!(fifth["status"]["replicas"], 3);
    assert_eq!(fifth["metadata"]["generation"], 2);
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let (o, _d) = setup().await;
    let cm = rt(&o, "", "configmaps");
    o.create(
        cm,
        Some("default"),
        json!({"metadata": {"name": "c", "finalizers": ["example.com/hold"]}}),
        &WriteOptions::default(),
    )
    .await
    .unwrap();
    let marked = v(&o
        .delete(cm, Some("default"), "c", &DeleteOptions::default())
        .await
        .unwrap()
        .object);
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert!(o.get(cm, Some("default"), "c").await.is_ok());
    o.patch(
        cm,
        Some("default"),
        "c",
        PatchType::Merge,
        json!({"metadata": {"finalizers": null}}),
        Target::Main,
        &WriteOptions::default(),
    )
    .await
    .unwrap();
    assert!(matches!(
        o.get(cm, Some("default"), "c").await,
        Err(ObjectError::NotFound { .. })
    ));
}

#[tokio::test]
async fn binding_from_a_stale_copy_rereads_and_keeps_the_newer_pod() {
    let (o, _d) = setup().await;
    let pods = rt(&o, "", "pods");
    let w = WriteOptions::default();
    let pod =
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
    let stale = v(&o
        .create(pods, Some("default"), pod, &w)
        .await
        .unwrap()
        .object);
    o.update_with(pods, Some("default"), "p", Target::Main, &w, |cur| {
        let mut next = cur.clone();
        next["metadata"]["labels"] = json!({"newer": "yes"});
        Ok(next)
    })
    .await
    .unwrap();
    let bound = v(&o
        .bind_pod_from("default", "p", "n1", Some(&stale))
        .await
        .unwrap()
        .object);
    assert_eq!(bound["spec"]["nodeName"], "n1");
    assert_eq!(
        bound["metadata"]["labels"]["newer"], "yes",
        "the write that came between is kept"
    );
    // A stale copy cannot bind a pod twice.
    let again = o.bind_pod_from("default", "p", "n2", Some(&stale)).await;
    assert!(
        matches!(&again, Err(ObjectError::Conflict { message, .. }) if message.contains("already assigned")),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_bound_pod_being_deleted_waits_for_its_node_through_status_writes() {
    let (o, _d) = setup().await;
    let pods = rt(&o, "", "pods");
    let w = WriteOptions::default();
    o.create(
        pods,
        Some("default"),
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}),
        &w,
    )
    .await
    .unwrap();
    o.bind_pod("default", "p", "n1").await.unwrap();
    let marked = v(&o
        .delete(pods, Some("default"), "p", &DeleteOptions::default())
        .await
        .unwrap()
        .object);
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 30);
    // The node agent still reports status while it stops the containers.
    o.patch(
        pods,
        Some("default"),
        "p",
        PatchType::Merge,
        json!({"status": {"phase": "Running"}}),
        Target::Status,
        &w,
    )
    .await
    .unwrap();
    assert!(
        o.get(pods, Some("default"), "p").await.is_ok(),
        "still there until the agent deletes it"
    );
    let zero = DeleteOptions {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    o.delete(pods, Some("default"), "p", &zero).await.unwrap();
    assert!(matches!(
        o.get(pods, Some("default"), "p").await,
        Err(ObjectError::NotFound { .. })
    ));
}

/// Regression: the node agent's final delete (grace 0) of a terminating pod raced with
/// its own status writes; a delete that met a conflict fell through to "already being
/// deleted" and answered OK with the pod kept, Terminating for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_delete_racing_status_writes_still_deletes() {
    let (o, _d) = setup().await;
    let o = std::sync::Arc::new(o);
    let w = WriteOptions::default();
    for i in 0..100 {
        let pods = rt(&o, "", "pods");
        let name = format!("p{i}");
        o.create(
            pods,
            Some("default"),
            json!({"metadata": {"name": name}, "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": "x"}]}}),
            &w,
        )
        .await
        .unwrap();
        o.bind_pod("default", &name, "n1").await.unwrap();
        o.delete(pods, Some("default"), &name, &DeleteOptions::default())
            .await
            .unwrap();
        let writer = {
            let (o, name) = (o.clone(), name.clone());
            tokio::spawn(async move {
                let pods = rt(&o, "", "pods");
                for n in 0..20 {
                    let status = json!({"status": {"message": format!("write {n}")}});
                    let _ = o
                        .patch(
                            pods,
                            Some("default"),
                            &name,
                            PatchType::Merge,
                            status,
                            Target::Status,
                            &WriteOptions::default(),
                        )
                        .await;
                    tokio::task::yield_now().await;
                }
            })
        };
        let zero = DeleteOptions {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        o.delete(pods, Some("default"), &name, &zero).await.unwrap();
        writer.await.unwrap();
        assert!(
            matches!(
                o.get(pods, Some("default"), &name).await,
                Err(ObjectError::NotFound { .. })
            ),
            "{name} kept"
        );
    }
}

#[tokio::test]
async fn server_side_apply_creates_then_conflicts() {
    let (o, _d) = setup().await;
    let d = rt(&o, "apps", "deployments");
    let apply = |m: &str, force| WriteOptions {
        field_manager: Some(m.into()),
        force,
        ..Default::default()
    };
    let w = o
        .patch(
            d,
            Some("default"),
            "web",
            PatchType::Apply,
            deployment("nginx:1"),
            Target::Main,
            &apply("kubectl", false),
        )
        .await
        .unwrap();
    assert!(w.created);
    o.update_with(
        d,
        Some("default"),
        "web",
        Target::Main,
        &WriteOptions::default(),
        |old| {
            let mut s = crate::registry::scale::scale_of(d, old);
            s["spec"]["replicas"] = json!(4);
            Ok(crate::registry::scale::apply_scale(old, &s).unwrap())
        },
    )
    .await
    .unwrap();
    let mut cfg = deployment("nginx:1");
    cfg["spec"]["replicas"] = json!(2);
    o.patch(
        d,
        Some("default"),
        "web",
        PatchType::Apply,
        cfg.clone(),
        Target::Main,
        &apply("other", false),
    )
    .await
    .unwrap();
    // Changing the shared image and other's replicas: two conflicts.
    let mut cfg = deployment("nginx:2");
    cfg["spec"]["replicas"] = json!(7);
    let err = o
        .patch(
            d,
            Some("default"),
            "web",
            PatchType::Apply,
            cfg.clone(),
            Target::Main,
            &apply("kubectl", false),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("Apply failed with 2 conflicts"),
        "{err}"
    );
    let ok = v(&o
        .patch(
            d,
            Some("default"),
            "web",
            PatchType::Apply,
            cfg,
            Target::Main,
            &apply("kubectl", true),
        )
        .await
        .unwrap()
        .object);
    assert_eq!(ok["spec"]["replicas"], 7);
}

#[tokio::test]
async fn lists_filter_and_page() {
    let (o, _d) = setup().await;
    let cm = rt(&o, "", "configmaps");
    for i in 0..5 {
        o.create(
            cm,
            Some("default"),
            json!({"metadata": {"name": format!("c{i}"), "labels": {"n": i.to_string()}}}),
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    }
    let opts = ListOptions {
        labels: Selector::parse("n in (1,3)").unwrap(),
        ..Default::default()
    };
    assert_eq!(
        o.list(cm, Some("default"), &opts)
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    let first = o
        .list(
            cm,
            None,
            &ListOptions {
                limit: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(first.items.len(), 3);
    let rest = o
        .list(
            cm,
            None,
            &ListOptions {
                continue_token: first.continue_token,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 2);
    assert!(rest.continue_token.is_none());
}

#[tokio::test]
async fn racing_patches_all_land_unless_they_pin_a_version() {
    let (o, _d) = setup().await;
    let o = Arc::new(o);
    let cm = rt(&o, "", "configmaps");
    let created = o
        .create(
            cm,
            Some("default"),
            json!({"metadata": {"name": "c"}, "data": {"seed": "x"}}),
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    let first_rv = v(&created.object)["metadata"]["resourceVersion"].clone();
    // No patch carries a resourceVersion: each applies to whatever is current, none is lost.
    let racers: Vec<_> = (0..24)
        .map(|i| {
            let o = o.clone();
            tokio::spawn(async move {
                let cm = rt(&o, "", "configmaps");
                let (ptype, patch) = match i % 3 {
                    0 => (
                        PatchType::Json,
                        json!([{"op": "add", "path": format!("/data/k{i}"), "value": "v"}]),
                    ),
                    1 => (
                        PatchType::Merge,
                        json!({"metadata": {"labels": {format!("k{i}"): "v"}}}),
                    ),
                    _ => (
                        PatchType::Strategic,
                        json!({"metadata": {"labels": {format!("k{i}"): "v"}}}),
                    ),
                };
                let opts = WriteOptions::default();
                o.patch(cm, Some("default"), "c", ptype, patch, Target::Main, &opts)
                    .await
            })
        })
        .collect();
    for r in racers {
        r.await.unwrap().unwrap();
    }
    let now = o
        .get(cm, Some("default"), "c")
        .await
        .unwrap()
        .to_value()
        .unwrap();
    assert_eq!(
        now["metadata"]["labels"].as_object().unwrap().len(),
        16,
        "{now}"
    );
    assert_eq!(now["data"].as_object().unwrap().len(), 9, "{now}");
    // A patch that sets a stale resourceVersion is a precondition and conflicts.
    let err = o
        .patch(
            cm,
            Some("default"),
            "c",
            PatchType::Merge,
            json!({"metadata": {"resourceVersion": first_rv, "labels": {"late": "x"}}}),
            Target::Main,
            &WriteOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ObjectError::Conflict { .. }), "{err}");
}

/// Regression: a list with `resourceVersionMatch=Exact` at a compacted revision was a 500;
/// like a watch from there it is `410 Expired` (one mapping of the store's `Compacted`).
#[tokio::test]
async fn an_exact_list_at_a_compacted_revision_is_expired() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open_tuned(dir.path(), 10, 4096, 8, false).unwrap());
    let objects = Objects::new(store.clone(), Arc::new(Registry::new()));
    let ns = rt(&objects, "", "namespaces");
    let w = WriteOptions::default();
    objects
        .create(ns, None, json!({"metadata": {"name": "default"}}), &w)
        .await
        .unwrap();
    let cm = rt(&objects, "", "configmaps");
    for i in 0..300 {
        let body = json!({"metadata": {"name": format!("c{i}")}, "data": {"k": "v".repeat(64)}});
        objects.create(cm, Some("default"), body, &w).await.unwrap();
    }
    for _ in 0..200 {
        if store.oldest_revision() > 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(store.oldest_revision() > 2, "history was not compacted");
    let opts = ListOptions {
        resource_version: Some(2),
        exact: true,
        ..Default::default()
    };
    let err = objects.list(cm, Some("default"), &opts).await.unwrap_err();
    assert!(
        matches!(&err, ObjectError::Gone(m) if m.starts_with("too old resource version: 2")),
        "{err:?}"
    );
    assert!(matches!(
        objects.watch(cm, None, 2, WatchFilter::default()),
        Err(ObjectError::Gone(_))
    ));
}

/// Regression: an object in the store that no longer decodes as its kind was a 400
/// blaming the client; it is the server's 500, naming the object.
#[tokio::test]
async fn a_stored_object_that_does_not_decode_is_an_internal_error() {
    let (objects, _d) = setup().await;
    let cm = rt(&objects, "", "configmaps");
    let key = cm.key(Some("default"), "broken");
    objects
        .store()
        .put(
            &key,
            crate::store::Precondition::Absent,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "broken", "namespace": "default"}, "data": {"k": 5}}),
        )
        .await
        .unwrap();
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "broken", "namespace": "default"}, "data": {"k": "v"}});
    let err = objects
        .update(
            cm,
            Some("default"),
            "broken",
            body,
            Target::Main,
            &WriteOptions::default(),
        )
        .await
        .unwrap_err();
    let (code, status) = crate::apiserver::error::ApiError::Object(err).status();
    assert_eq!(code.as_u16(), 500, "{status}");
    let msg = status["message"].as_str().unwrap();
    assert!(
        msg.starts_with(
            "Internal error occurred: the stored configmaps \"broken\" cannot be decoded"
        ),
        "{msg}"
    );
    // A client's own bad body is still its 400.
    let bad = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other"}, "data": {"k": 5}});
    let err = objects
        .create(cm, Some("default"), bad, &WriteOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ObjectError::BadRequest(_)), "{err:?}");
}

/// Black-box fuzzing of the running server found these; each panicked a request task.
/// They are client errors now.
#[tokio::test]
async fn bodies_that_are_not_objects_are_client_errors() {
    let (o, _d) = setup().await;
    let cm = rt(&o, "", "configmaps");
    let svc = rt(&o, "", "services");
    let w = WriteOptions::default();
    o.create(cm, Some("default"), json!({"metadata": {"name": "c"}}), &w)
        .await
        .unwrap();
    o.create(
        svc,
        Some("default"),
        json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}),
        &w,
    )
    .await
    .unwrap();
    let patch = |rt, name: &'static str, ptype, body: Value| {
        let o = &o;
        async move {
            o.patch(
                rt,
                Some("default"),
                name,
                ptype,
                body,
                Target::Main,
                &WriteOptions::default(),
            )
            .await
        }
    };
    // A JSON patch that replaces the whole object with something else.
    for body in [
        json!([{"op": "replace", "path": "", "value": []}]),
        json!([{"op": "add", "path": "", "value": 5}]),
        json!([{"op": "copy", "path": "", "from": "/metadata/name"}]),
    ] {
        let err = patch(cm, "c", PatchType::Json, body.clone())
            .await
            .unwrap_err();
        assert!(matches!(err, ObjectError::BadRequest(_)), "{body}: {err:?}");
    }
    // A failed multi-step JSON patch (json-patch's undo of it panicked).
    let body = json!([{"op": "move", "path": "/spec/clusterIP", "from": "/metadata/namespace"},
        {"op": "move", "path": "//", "from": "/metadata"}]);
    let err = patch(svc, "s", PatchType::Json, body).await.unwrap_err();
    assert!(matches!(err, ObjectError::PatchFailed(_)), "{err:?}");
    // A Service whose spec is not an object.
    let err = patch(svc, "s", PatchType::Merge, json!({"spec": 2}))
        .await
        .unwrap_err();
    assert!(matches!(err, ObjectError::BadRequest(_)), "{err:?}");
    let (mut put, _) = o.get_value(svc, Some("default"), "s").await.unwrap();
    put["spec"] = json!([]);
    let err = o
        .update(svc, Some("default"), "s", put, Target::Main, &w)
        .await
        .unwrap_err();
    assert!(matches!(err, ObjectError::BadRequest(_)), "{err:?}");
    // Nothing changed.
    let (s, _) = o.get_value(svc, Some("default"), "s").await.unwrap();
    assert_eq!(s["spec"]["ports"][0]["port"], 80);
}

#[tokio::test]
async fn a_nodes_pod_range_is_set_once() {
    let (o, _d) = setup().await;
    let nodes = rt(&o, "", "nodes");
    let opts = WriteOptions::default();
    let bad = json!({"metadata": {"name": "n0"}, "spec": {"podCIDR": "10.244.1.0"}});
    let err = o.create(nodes, None, bad, &opts).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "Node \"n0\" is invalid: spec.podCIDRs[0]: Invalid value: \"10.244.1.0\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
    );
    let n = json!({"metadata": {"name": "n1"}});
    o.create(nodes, None, n, &opts).await.unwrap();
    // From none to one: allowed (podCIDRs follows podCIDR).
    let w = o
        .update_with(nodes, None, "n1", Target::Main, &opts, |cur| {
            let mut next = cur.clone();
            next["spec"]["podCIDR"] = json!("10.244.1.0/24");
            Ok(next)
        })
        .await
        .unwrap();
    assert_eq!(v(&w.object)["spec"]["podCIDRs"], json!(["10.244.1.0/24"]));
    let err = o
        .update_with(nodes, None, "n1", Target::Main, &opts, |cur| {
            let mut next = cur.clone();
            next["spec"]["podCIDR"] = json!("10.244.2.0/24");
            next["spec"]["podCIDRs"] = json!(["10.244.2.0/24"]);
            Ok(next)
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Node \"n1\" is invalid: spec.podCIDRs: Forbidden: node updates may not change podCIDR except from \"\" to valid"
    );
}

fn pod(name: &str, tolerations: Value) -> Value {
    json!({"metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "tolerations": tolerations}})
}

/// DefaultTolerationSeconds ran twice (once here with the configured seconds, once in the
/// Pod strategy with a fixed 300 s): a pod tolerating every taint got two more.
#[tokio::test]
async fn default_tolerations_are_added_once_with_the_configured_seconds() {
    let (o, _d) = setup().await;
    let o = o.with_admission(Admission {
        default_not_ready_toleration_seconds: 7,
        default_unreachable_toleration_seconds: 9,
        ..Admission::default()
    });
    let pods = rt(&o, "", "pods");
    let opts = WriteOptions::default();
    let create = |p| o.create(pods, Some("default"), p, &opts);
    let wildcard = json!([{"operator": "Exists"}]);
    let w = create(pod("wildcard", wildcard.clone())).await.unwrap();
    assert_eq!(v(&w.object)["spec"]["tolerations"], wildcard);
    let w = create(pod("plain", json!([]))).await.unwrap();
    assert_eq!(
        v(&w.object)["spec"]["tolerations"],
        json!([
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 7},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 9},
        ])
    );
}

/// DenyServiceExternalIPs: no Service gains an external IP; one may keep or drop its own.
#[tokio::test]
async fn deny_service_external_ips_refuses_new_ones_only() {
    let (o, _d) = setup().await;
    let svcs = rt(&o, "", "services");
    let opts = WriteOptions::default();
    let svc = |name: &str, ips: Value| json!({"metadata": {"name": name}, "spec": {"ports": [{"port": 80}], "externalIPs": ips}});
    // Before the plugin is on, a Service has one.
    o.create(
        svcs,
        Some("default"),
        svc("old", json!(["192.0.2.1", "192.0.2.2"])),
        &opts,
    )
    .await
    .unwrap();
    let o = o.with_admission(Admission {
        deny_service_external_ips: true,
        ..Admission::default()
    });
    let svcs = rt(&o, "", "services");
    let err = o
        .create(
            svcs,
            Some("default"),
            svc("new", json!(["192.0.2.9"])),
            &opts,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "services \"new\" is forbidden: Use of external IPs is denied by admission control"
    );
    o.create(svcs, Some("default"), svc("none", json!([])), &opts)
        .await
        .unwrap();
    let update = |ips: Value| {
        let mut s = svc("old", ips);
        s["spec"]["clusterIP"] = Value::Null;
        o.update(svcs, Some("default"), "old", s, Target::Main, &opts)
    };
    update(json!(["192.0.2.2"])).await.unwrap();
    assert!(update(json!(["192.0.2.2", "192.0.2.3"])).await.is_err());
}

/// Refuses deleting objects labelled `keep`, as an access-control plugin might.
struct KeepLabelled;

#[async_trait::async_trait]
impl admission::Validating for KeepLabelled {
    fn name(&self) -> &'static str {
        "KeepLabelled"
    }

    fn handles(&self, a: &Attributes<'_>) -> bool {
        a.operation == Operation::Delete
    }

    async fn validate(
        &self,
        a: &Attributes<'_>,
        obj: &Value,
        _objects: &Objects,
    ) -> Result<(), ObjectError> {
        assert!(obj.is_null(), "a delete has no new object");
        let old = a.old.expect("a delete sees the object deleted");
        if old.pointer("/metadata/labels/keep").is_some() {
            return Err(ObjectError::Forbidden {
                resource: a.resource.qualified(),
                name: a.name.into(),
                message: "labelled keep".into(),
            });
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_validating_plugin_can_refuse_a_delete() {
    let (o, _d) = setup().await;
    let mut chain = admission::Chain::new(&Admission::default());
    chain.push_validating(Box::new(KeepLabelled));
    let o = o.with_admission_chain(chain);
    let cm = rt(&o, "", "configmaps");
    let w = WriteOptions::default();
    for (name, labels) in [("kept", json!({"keep": "yes"})), ("gone", json!({}))] {
        let body = json!({"metadata": {"name": name, "labels": labels}});
        o.create(cm, Some("default"), body, &w).await.unwrap();
    }
    let opts = DeleteOptions::default();
    let err = o
        .delete(cm, Some("default"), "kept", &opts)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "configmaps \"kept\" is forbidden: labelled keep"
    );
    let (code, status) = crate::apiserver::error::ApiError::Object(err).status();
    assert_eq!(code, 403);
    assert_eq!(
        (
            &status["kind"],
            &status["reason"],
            &status["details"]["name"]
        ),
        (&json!("Status"), &json!("Forbidden"), &json!("kept"))
    );
    o.delete(cm, Some("default"), "gone", &opts).await.unwrap();
    // A collection delete meets the plugin for each object.
    let all = o
        .delete_collection(cm, Some("default"), &ListOptions::default(), &opts)
        .await;
    assert!(matches!(all, Err(ObjectError::Forbidden { .. })), "{all:?}");
    assert!(o.get(cm, Some("default"), "kept").await.is_ok());
}

#[tokio::test]
async fn the_immortal_namespaces_may_not_be_deleted() {
    let (o, _d) = setup().await;
    let ns = rt(&o, "", "namespaces");
    let err = o
        .delete(ns, None, "default", &DeleteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "namespaces \"default\" is forbidden: this namespace may not be deleted"
    );
    o.create(
        ns,
        None,
        json!({"metadata": {"name": "mortal"}}),
        &WriteOptions::default(),
    )
    .await
    .unwrap();
    o.delete(ns, None, "mortal", &DeleteOptions::default())
        .await
        .unwrap();
}
