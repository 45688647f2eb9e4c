#!/usr/bin/env python3
"""Captures the fuzzers' seed corpus from real kubectl requests: starts `skiff server`, runs
kubectl (v1.33, -v=9) through creates, client-side and server-side applies, every patch
type, scales, selectors and token requests, and files each request it logged under
control-plane/fuzz/corpus/<target>/. Run from a built tree (scripts/setup.sh, cargo build):

    scripts/fuzz-corpus.py
"""
import hashlib, json, os, re, shutil, socket, subprocess, sys, tempfile, time, urllib.parse

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
out = os.path.join(root, "control-plane/fuzz/corpus")
kubectl = os.path.join(root, ".tools/bin/kubectl")
skiff = os.path.join(root, "target/debug/skiff")

MANIFEST = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web, tier: frontend}
  annotations: {team: edge}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      volumes:
      - name: cfg
        configMap:
          name: settings
          items: [{key: greeting, path: conf/greeting.txt, mode: 0400}]
      - name: scratch
        emptyDir: {sizeLimit: 64Mi}
      initContainers:
      - name: init
        image: registry.example/init:1.0
        command: [/bin/init, --once]
      containers:
      - name: web
        image: registry.example/web:1.0
        args: [--port=8080, "--name=$(POD_NAME)"]
        ports: [{containerPort: 8080, name: http}, {containerPort: 9090, protocol: UDP}]
        env:
        - {name: MODE, value: prod}
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: GREETING
          valueFrom: {configMapKeyRef: {name: settings, key: greeting, optional: true}}
        resources:
          requests: {cpu: 100m, memory: 64Mi, ephemeral-storage: 1Gi}
          limits: {cpu: "1.5", memory: 128Mi}
        volumeMounts:
        - {name: cfg, mountPath: /etc/app, readOnly: true}
        - {name: scratch, mountPath: /tmp, subPath: web}
        readinessProbe:
          httpGet: {path: /healthz, port: http}
          periodSeconds: 5
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 5}
      nodeSelector: {runtime.skiff.dev/wasm: "true"}
      runtimeClassName: wasmtime
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {greeting: hello, "app.properties": "a=1\\nb=2\\n"}
binaryData: {blob: aGVsbG8=}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http, name: http}, {port: 53, protocol: UDP, targetPort: 5353}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: once}
spec:
  backoffLimit: 2
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: registry.example/job:1.0}]
"""

COMMANDS = [
    ["apply", "-f", "m.yaml"],
    ["apply", "-f", "m2.yaml"],
    ["apply", "--server-side", "--force-conflicts", "-f", "m.yaml"],
    ["apply", "--server-side", "--force-conflicts", "-f", "m2.yaml"],
    ["replace", "-f", "m.yaml"],
    ["patch", "deployment", "web", "--type=json", "-p",
     '[{"op":"replace","path":"/spec/replicas","value":4},{"op":"add","path":"/metadata/labels/x","value":"y"},'
     '{"op":"remove","path":"/metadata/annotations/team"},{"op":"test","path":"/spec/replicas","value":4},'
     '{"op":"copy","from":"/metadata/labels/x","path":"/metadata/labels/z"},{"op":"move","from":"/metadata/labels/z","path":"/metadata/labels/w"}]'],
    ["patch", "deployment", "web", "--type=merge", "-p", '{"spec":{"minReadySeconds":3,"template":{"metadata":{"labels":{"v":"2"}}}},"metadata":{"labels":{"x":null}}}'],
    ["patch", "deployment", "web", "-p",
     '{"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"web"}],"containers":[{"name":"web","image":"registry.example/web:3.0","env":[{"name":"MODE","$patch":"delete"}]}]}}}}'],
    ["patch", "configmap", "settings", "-p", '{"data":{"greeting":"hi","$retainKeys":["greeting"]}}'],
    ["label", "deployment", "web", "release=canary", "--overwrite"],
    ["annotate", "service", "web", "note=first"],
    ["scale", "deployment", "web", "--replicas=3"],
    ["set", "image", "deployment/web", "web=registry.example/web:4.0"],
    ["create", "namespace", "team-a"],
    ["create", "deployment", "api", "--image=registry.example/api:1.0", "--replicas=3", "--port=8080"],
    ["create", "configmap", "c2", "--from-literal=a=b", "--from-literal=long=" + "x" * 200],
    ["create", "secret", "generic", "s1", "--from-literal=password=s3cret"],
    ["create", "secret", "docker-registry", "regcred", "--docker-server=127.0.0.1:5000", "--docker-username=u", "--docker-password=p"],
    ["create", "service", "clusterip", "svc1", "--tcp=80:8080"],
    ["create", "service", "nodeport", "svc2", "--tcp=443:8443"],
    ["create", "job", "j1", "--image=registry.example/job:1.0"],
    ["create", "cronjob", "cj1", "--image=registry.example/job:1.0", "--schedule=*/5 * * * *"],
    ["create", "serviceaccount", "builder"],
    ["create", "token", "builder", "--duration=20m"],
    ["run", "single", "--image=registry.example/web:1.0", "--restart=Never", "--labels=app=single,tier=x", "--env=A=B", "--requests=cpu=250m,memory=1Gi", "--", "serve", "--fast"],
    ["get", "pods", "-l", "app in (web,single),tier!=backend,!legacy,release"],
    ["get", "pods", "-l", "app notin (x),env=prod,tier==frontend"],
    ["get", "pods", "--field-selector", "status.phase!=Failed,spec.nodeName=edge-1,metadata.name==single"],
    ["get", "events", "--field-selector", "involvedObject.kind=Pod,reason=Scheduled"],
    ["get", "deployments", "-A", "--limit=1"],
    ["delete", "pods", "-l", "app=single"],
    ["delete", "configmap", "c2", "--grace-period=0"],
]

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def hexdump_bytes(lines):
    data = bytearray()
    for l in lines:
        m = re.match(r"\s*[0-9a-f]{8}\s+((?:[0-9a-f]{2}\s+)+)", l)
        if m:
            data += bytes.fromhex("".join(m.group(1).split()))
    return bytes(data)

def records(log):
    """(method, url, content_type, body bytes or None, response body) per request."""
    lines = log.splitlines()
    body, out, i = None, [], 0
    while i < len(lines):
        l = lines[i]
        if '"Request Body" body=<' in l:
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith(">"):
                j += 1
            block = lines[i + 1:j]
            if block and re.match(r"\s*[0-9a-f]{8}  ", block[0]):
                body = hexdump_bytes(block)
            else:
                body = "\n".join(l[1:] if l.startswith("\t") else l for l in block).encode()
            i = j
        elif '"Request Body" body="' in l:
            q = l.split('body=', 1)[1]
            body = json.loads(q).encode() if q != '""' else None
        elif '"Request" curlCommand=<' in l:
            # -v=9 logs each request as a curl command line.
            curl = lines[i + 1]
            m = re.search(r"-X(\w+)", curl)
            ct = re.search(r'-H "Content-Type: ([^"]+)"', curl)
            url = re.search(r"'(https://[^']+)'", curl)
            out.append([m.group(1), url.group(1), ct.group(1) if ct else "", body, None])
            body = None
            i += 2
        elif '"Response Body" body="' in l and out:
            try:
                out[-1][4] = json.loads(json.loads(l.split('body=', 1)[1]))
            except Exception:
                pass
        i += 1
    return out

def save(target, data):
    d = os.path.join(out, target); os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    name = hashlib.sha256(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

def quantities(v, out):
    if isinstance(v, dict):
        for k, x in v.items():
            if k in ("limits", "requests", "capacity", "allocatable") and isinstance(x, dict):
                out.extend(str(q) for q in x.values())
            elif k == "sizeLimit":
                out.append(str(x))
            else:
                quantities(x, out)
    elif isinstance(v, list):
        for x in v:
            quantities(x, out)

def main():
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    tmp = tempfile.mkdtemp()
    port = free_port()
    server = subprocess.Popen([skiff, "server", "--data-dir", os.path.join(tmp, "data"), "--listen", f"127.0.0.1:{port}"],
                              stderr=subprocess.DEVNULL)
    env = dict(os.environ, KUBECONFIG=os.path.join(tmp, "data/kubeconfig"))
    for _ in range(100):
        if os.path.exists(env["KUBECONFIG"]):
            break
        time.sleep(0.1)
    time.sleep(0.5)
    with open(os.path.join(tmp, "m.yaml"), "w") as f:
        f.write(MANIFEST)
    with open(os.path.join(tmp, "m2.yaml"), "w") as f:
        f.write(MANIFEST.replace("web:1.0", "web:2.0").replace("replicas: 2", "replicas: 5").replace("{name: MODE, value: prod}", "{name: MODE, value: canary}"))
    log = ""
    try:
        for c in COMMANDS:
            r = subprocess.run([kubectl, "--cache-dir", os.path.join(tmp, "cache"), "-v=9"] + c, cwd=tmp, env=env,
                               capture_output=True, text=True)
            log += r.stderr
    finally:
        server.kill()
    last_get = {}
    applied = {}
    for method, url, ct, body, resp in records(log):
        u = urllib.parse.urlsplit(url)
        q = urllib.parse.parse_qs(u.query)
        save("query", u.path + ("?" + u.query if u.query else ""))
        for s in q.get("labelSelector", []):
            save("label-selector", s)
        for s in q.get("fieldSelector", []):
            save("field-selector", s)
        if method == "GET" and isinstance(resp, dict):
            last_get[u.path] = resp
        if not body:
            continue
        base = ct.split(";")[0]
        if base == "application/vnd.kubernetes.protobuf":
            save("protobuf", body)
            continue
        text = body.decode()
        if base == "application/apply-patch+yaml":
            save("yaml", text)
            prev = applied.get(u.path)
            cur = last_get.get(u.path) or prev or {}
            try:
                save("apply", json.dumps([cur, json.loads(text)]))
            except ValueError:
                pass
            applied[u.path] = text
            continue
        doc = last_get.get(u.path, {})
        try:
            v = json.loads(text)
        except ValueError:
            continue
        kind = {"application/json-patch+json": "json-patch", "application/merge-patch+json": "merge-patch",
                "application/strategic-merge-patch+json": "strategic-merge-patch"}.get(base)
        if kind:
            save(kind, json.dumps([doc, v]))
            save("json", json.dumps(doc) if doc else text)
        else:
            save("json", text)
        qs = []
        quantities(v, qs)
        quantities(doc, qs)
        for x in qs:
            save("quantity", x)
    shutil.rmtree(tmp, ignore_errors=True)
    for t in sorted(os.listdir(out)):
        print(t, len(os.listdir(os.path.join(out, t))))

main()
