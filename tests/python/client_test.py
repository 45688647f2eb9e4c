"""The official Python client against a Skiff API server: list, create, patch, watch."""
import sys
import threading
import time

from kubernetes import client, config, watch

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
apps = client.AppsV1Api()
ns = "pyclient"

v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
assert ns in [n.metadata.name for n in v1.list_namespace().items]

pod = client.V1Pod(
    metadata=client.V1ObjectMeta(name="p1", labels={"app": "py"}),
    spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="registry.example/app:1")]),
)
created = v1.create_namespaced_pod(ns, pod)
assert created.metadata.uid and created.metadata.resource_version, created.metadata
assert created.spec.restart_policy == "Always"
assert created.status.phase == "Pending"

pods = v1.list_namespaced_pod(ns, label_selector="app=py")
assert [p.metadata.name for p in pods.items] == ["p1"], pods
start_rv = pods.metadata.resource_version

# Watch from the list's resourceVersion while another thread makes changes.
events = []
def changes():
    time.sleep(0.5)
    v1.patch_namespaced_pod("p1", ns, {"metadata": {"labels": {"stage": "patched"}}})
    v1.create_namespaced_pod(ns, client.V1Pod(
        metadata=client.V1ObjectMeta(name="p2", labels={"app": "py"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="registry.example/app:1")])))
    v1.delete_namespaced_pod("p2", ns)
t = threading.Thread(target=changes)
t.start()
w = watch.Watch()
for ev in w.stream(v1.list_namespaced_pod, ns, resource_version=start_rv, timeout_seconds=10):
    labels = ev["object"].metadata.labels or {}
    events.append((ev["type"], ev["object"].metadata.name, labels.get("stage")))
    if ev["type"] == "DELETED":
        w.stop()
t.join()
# Other writers (the scheduler marks pods unschedulable: this cluster has no nodes) may add
# MODIFIED events; ours must all be there, in order.
ours = []
for t, n, stage in events:
    # Other writers' MODIFIED events (the scheduler's) may come in between.
    mine = (n == "p2" and t != "MODIFIED") or (n == "p1" and stage == "patched")
    if mine and (not ours or ours[-1] != (t, n)):
        ours.append((t, n))
assert ours == [("MODIFIED", "p1"), ("ADDED", "p2"), ("DELETED", "p2")], events

patched = v1.read_namespaced_pod("p1", ns)
assert patched.metadata.labels == {"app": "py", "stage": "patched"}, patched.metadata.labels

# JSON merge patch on a Deployment through the apps API, and the scale subresource.
dep = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="d1"),
    spec=client.V1DeploymentSpec(
        selector=client.V1LabelSelector(match_labels={"app": "d1"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "d1"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="registry.example/d1:1")]))))
apps.create_namespaced_deployment(ns, dep)
apps.patch_namespaced_deployment_scale("d1", ns, {"spec": {"replicas": 4}})
assert apps.read_namespaced_deployment("d1", ns).spec.replicas == 4

# The client's own e2e (test_service_apis): a created Service answers with a status (kube
# always serializes `status.loadBalancer`), and a patch adds a port by its merge key.
svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "frontend"},
       "spec": {"ports": [{"name": "port", "port": 80, "protocol": "TCP", "targetPort": 80}],
                "selector": {"name": "frontend"}}}
created = v1.create_namespaced_service(ns, svc)
assert created.status and created.status.load_balancer is not None, created.status
assert v1.read_namespaced_service("frontend", ns).status.load_balancer is not None
svc["spec"]["ports"] = [{"name": "new", "port": 8080, "protocol": "TCP", "targetPort": 8080}]
patched = v1.patch_namespaced_service("frontend", ns, svc)
assert sorted(p.port for p in patched.spec.ports) == [80, 8080], patched.spec.ports
assert patched.status.load_balancer is not None, patched.status
v1.delete_namespaced_service("frontend", ns)

# deletecollection with a label selector.
for i in range(3):
    v1.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"c{i}", labels={"batch": "x" if i < 2 else "y"})))
v1.delete_collection_namespaced_config_map(ns, label_selector="batch=x")
assert [c.metadata.name for c in v1.list_namespaced_config_map(ns).items] == ["c2"]

# Errors come back as Status objects the client understands.
try:
    v1.read_namespaced_pod("missing", ns)
    raise AssertionError("expected 404")
except client.exceptions.ApiException as e:
    assert e.status == 404 and "not found" in e.body, e

print("python client: ok")
