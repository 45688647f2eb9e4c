#!/usr/bin/env python3
"""Generates control-plane/src/apiserver/protobuf_schema.rs: the protobuf field table of every
served kind (and what they contain), read from the k8s-pb crate's prost definitions, with JSON
field names from k8s-openapi. Run after changing either crate's version:

    scripts/gen-protobuf-schema.py > control-plane/src/apiserver/protobuf_schema.rs
"""
import glob, json, os, re, subprocess, sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
meta = json.loads(subprocess.check_output(["cargo", "metadata", "--format-version", "1"], cwd=root))
src = {p["name"]: os.path.dirname(p["manifest_path"]) for p in meta["packages"] if p["name"] in ("k8s-pb", "k8s-openapi")}
PB, OA = src["k8s-pb"] + "/src", src["k8s-openapi"] + "/src/v1_33"

ROOTS = [
    "api.core.v1." + k for k in ["Namespace", "Pod", "Node", "ConfigMap", "Secret", "Service", "Endpoints", "Event", "ServiceAccount", "ReplicationController", "Binding"]
] + ["api.apps.v1." + k for k in ["Deployment", "ReplicaSet", "DaemonSet"]] + [
    "api.batch.v1.Job", "api.batch.v1.CronJob", "api.coordination.v1.Lease", "api.node.v1.RuntimeClass",
    "api.autoscaling.v1.Scale", "api.authentication.v1.TokenRequest", "apimachinery.pkg.apis.meta.v1.DeleteOptions",
]
# Encoded specially by the decoder; their fields are not listed.
SPECIAL = {
    "apimachinery.pkg.apis.meta.v1.Time": "Time", "apimachinery.pkg.apis.meta.v1.MicroTime": "MicroTime",
    "apimachinery.pkg.apis.meta.v1.Duration": "Duration", "apimachinery.pkg.api.resource.Quantity": "Quantity",
    "apimachinery.pkg.util.intstr.IntOrString": "IntOrString", "apimachinery.pkg.runtime.RawExtension": "Raw",
    "apimachinery.pkg.apis.meta.v1.FieldsV1": "Raw",
}

# --- k8s-pb: modules -> structs -> fields
messages = {}
for path in glob.glob(PB + "/**/mod.rs", recursive=True):
    mod = os.path.relpath(os.path.dirname(path), PB).replace("/", ".")
    text = open(path).read()
    for m in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", text, re.S):
        name, body = m.group(1), m.group(2)
        fields = []
        for f in re.finditer(r"#\[prost\(([^)]*)\)\]\s*pub (?:r#)?(\w+):(.*?)(?=\n\s*(?:///|#\[prost|$))", body + "\n", re.S):
            attr, fname, ty = f.group(1), f.group(2), re.sub(r"\s+", "", f.group(3)).rstrip(",")
            tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
            mapm = re.match(r'btree_map = "string, (\w+)"', attr)
            kind = f"btree_map:{mapm.group(1)}" if mapm else attr.split(",")[0].strip()
            repeated = "repeated" in attr
            target = None
            if kind in ("message", "btree_map:message"):
                inner = re.sub(r"^::core::option::Option<|^::prost::alloc::vec::Vec<|^::prost::alloc::boxed::Box<|^::prost::alloc::collections::BTreeMap<::prost::alloc::string::String,", "", ty)
                inner = inner.replace("::prost::alloc::boxed::Box<", "").rstrip(">").rstrip(",")
                parts = inner.split("::")
                up = 0
                while parts and parts[0] == "super":
                    up += 1
                    parts.pop(0)
                base = mod.split(".")
                base = base[: len(base) - up] if up else base
                target = ".".join(base + parts)
            fields.append((tag, fname, kind, repeated, target))
        messages[mod + "." + name] = fields

# --- k8s-openapi: (module, struct, rust field) -> JSON name
json_names = {}
for path in glob.glob(OA + "/**/*.rs", recursive=True):
    mod = os.path.relpath(os.path.dirname(path), OA).replace("/", ".")
    text = open(path).read()
    for m in re.finditer(r"impl<'de> crate::serde::Deserialize<'de> for (\w+) \{(.*?)\n\}\n", text, re.S):
        for j, r in re.findall(r'"(\w+)" => Field::Key_(\w+),', m.group(2)):
            json_names[(mod, m.group(1).lower(), r)] = j

# Go structs embedded inline (`json:",inline"`): k8s-openapi spells their fields in the host.
INLINE_HOSTS = {"api.core.v1.VolumeSource": "volume", "api.core.v1.ProbeHandler": "probe", "api.core.v1.EphemeralContainerCommon": "ephemeralcontainer"}

# Go pointer fields (`*bool`, `*string`) of the served kinds, by message and JSON name, read from
# the Go types (k8s.io/api types.go). Go always encodes a non-pointer scalar, so there a false or
# "" is the zero that JSON would omit; a pointer is encoded only when set, so its false or "" is
# an explicit value (`enableServiceLinks: false`) and must be kept.
POINTER_SCALARS = {
    "api.batch.v1.CronJobSpec.suspend",
    "api.batch.v1.CronJobSpec.timeZone",
    "api.batch.v1.JobSpec.managedBy",
    "api.batch.v1.JobSpec.manualSelector",
    "api.batch.v1.JobSpec.suspend",
    "api.batch.v1.JobStatus.failedIndexes",
    "api.batch.v1.PodFailurePolicyOnExitCodesRequirement.containerName",
    "api.batch.v1.SuccessPolicyRule.succeededIndexes",
    "api.coordination.v1.LeaseSpec.holderIdentity",
    "api.coordination.v1.LeaseSpec.preferredHolder",
    "api.core.v1.AppArmorProfile.localhostProfile",
    "api.core.v1.AzureDiskVolumeSource.fsType",
    "api.core.v1.AzureDiskVolumeSource.readOnly",
    "api.core.v1.CSIVolumeSource.fsType",
    "api.core.v1.CSIVolumeSource.readOnly",
    "api.core.v1.ClusterTrustBundleProjection.name",
    "api.core.v1.ClusterTrustBundleProjection.optional",
    "api.core.v1.ClusterTrustBundleProjection.signerName",
    "api.core.v1.ConfigMap.immutable",
    "api.core.v1.ConfigMapEnvSource.optional",
    "api.core.v1.ConfigMapKeySelector.optional",
    "api.core.v1.ConfigMapProjection.optional",
    "api.core.v1.ConfigMapVolumeSource.optional",
    "api.core.v1.ContainerStatus.started",
    "api.core.v1.EndpointAddress.nodeName",
    "api.core.v1.EndpointPort.appProtocol",
    "api.core.v1.FileKeySelector.optional",
    "api.core.v1.GRPCAction.service",
    "api.core.v1.ISCSIVolumeSource.initiatorName",
    "api.core.v1.LocalVolumeSource.fsType",
    "api.core.v1.NodeFeatures.supplementalGroupsPolicy",
    "api.core.v1.NodeRuntimeHandlerFeatures.recursiveReadOnlyMounts",
    "api.core.v1.NodeRuntimeHandlerFeatures.userNamespaces",
    "api.core.v1.PodDNSConfigOption.value",
    "api.core.v1.PodResourceClaim.resourceClaimName",
    "api.core.v1.PodResourceClaim.resourceClaimTemplateName",
    "api.core.v1.PodResourceClaimStatus.resourceClaimName",
    "api.core.v1.PodSecurityContext.runAsNonRoot",
    "api.core.v1.PodSpec.automountServiceAccountToken",
    "api.core.v1.PodSpec.enableServiceLinks",
    "api.core.v1.PodSpec.hostUsers",
    "api.core.v1.PodSpec.runtimeClassName",
    "api.core.v1.PodSpec.setHostnameAsFQDN",
    "api.core.v1.PodSpec.shareProcessNamespace",
    "api.core.v1.PortStatus.error",
    "api.core.v1.ResourceHealth.message",
    "api.core.v1.SeccompProfile.localhostProfile",
    "api.core.v1.Secret.immutable",
    "api.core.v1.SecretEnvSource.optional",
    "api.core.v1.SecretKeySelector.optional",
    "api.core.v1.SecretProjection.optional",
    "api.core.v1.SecretVolumeSource.optional",
    "api.core.v1.SecurityContext.allowPrivilegeEscalation",
    "api.core.v1.SecurityContext.privileged",
    "api.core.v1.SecurityContext.readOnlyRootFilesystem",
    "api.core.v1.SecurityContext.runAsNonRoot",
    "api.core.v1.ServiceAccount.automountServiceAccountToken",
    "api.core.v1.ServicePort.appProtocol",
    "api.core.v1.ServiceSpec.allocateLoadBalancerNodePorts",
    "api.core.v1.ServiceSpec.loadBalancerClass",
    "api.core.v1.ServiceSpec.trafficDistribution",
    "api.core.v1.TypedLocalObjectReference.apiGroup",
    "api.core.v1.TypedObjectReference.apiGroup",
    "api.core.v1.TypedObjectReference.namespace",
    "api.core.v1.WindowsSecurityContextOptions.gmsaCredentialSpec",
    "api.core.v1.WindowsSecurityContextOptions.gmsaCredentialSpecName",
    "api.core.v1.WindowsSecurityContextOptions.hostProcess",
    "api.core.v1.WindowsSecurityContextOptions.runAsUserName",
    "apimachinery.pkg.apis.meta.v1.OwnerReference.controller",
    "apimachinery.pkg.apis.meta.v1.OwnerReference.blockOwnerDeletion",
    "apimachinery.pkg.apis.meta.v1.DeleteOptions.orphanDependents",
    "apimachinery.pkg.apis.meta.v1.DeleteOptions.propagationPolicy",
}

# Names the two crates spell differently beyond what the rules above recover.
OVERRIDES = {("api.core.v1.FcVolumeSource", "target_ww_ns"): "targetWWNs", ("api.core.v1.NodeSpec", "pod_cid_rs"): "podCIDRs"}
INLINE_FIELDS = {("api.core.v1.EphemeralContainer", "ephemeral_container_common")}

def json_name(name, fname):
    if (name, fname) in OVERRIDES:
        return OVERRIDES[(name, fname)]
    mod, struct = name.rsplit(".", 1)
    rust = "type_" if fname == "type" else fname
    for st in (struct.lower(), INLINE_HOSTS.get(name)):
        if st and (mod, st, rust) in json_names:
            return json_names[(mod, st, rust)]
    return None

def is_inline(parent, fname, target):
    """An embedded struct: the parent spells all of the child's fields itself."""
    if (parent, fname) in INLINE_FIELDS:
        return True
    if json_name(parent, fname) is not None or target not in messages:
        return False
    child = [json_name(target, f[1]) for f in messages[target]]
    pmod, pstruct = parent.rsplit(".", 1)
    host = INLINE_HOSTS.get(parent, pstruct.lower())
    return all(c is not None and (pmod, host, r) in json_names for c, r in zip(child, ["type_" if f[1] == "type" else f[1] for f in messages[target]]))

def camel(s):
    head, *rest = s.split("_")
    return head + "".join(w.capitalize() for w in rest)

def scalar(kind):
    if kind.startswith("btree_map"):
        v = kind.split(":")[1]
        return {"string": "Ty::MapStr(&Ty::Str)", "bytes": "Ty::MapStr(&Ty::Bytes)"}.get(v)
    return {"string": "Ty::Str", "bool": "Ty::Bool", "int32": "Ty::I32", "int64": "Ty::I64", 'bytes = "vec"': "Ty::Bytes"}[kind]

def ident(full):
    return full.replace(".", "_").upper()

seen, order = set(), []
def visit(name):
    if name in seen or name in SPECIAL:
        return
    if name not in messages:
        sys.exit(f"unknown message {name}")
    seen.add(name)
    for _, _, kind, _, target in messages[name]:
        if target:
            visit(target)
    order.append(name)

for r in ROOTS:
    visit(r)

out = ["// @generated by scripts/gen-protobuf-schema.py from the k8s-pb and k8s-openapi crates.", "// Do not edit by hand.", "", "use super::protobuf::{Field, Msg, Ty};", ""]
for name in sorted(order):
    mod, struct = name.rsplit(".", 1)
    rows = []
    for tag, fname, kind, repeated, target in messages[name]:
        j = json_name(name, fname)
        if j is None and target and is_inline(name, fname, target):
            j = ""
        if j is None:
            j = camel(fname)
            print(f"note: {name}.{fname}: no k8s-openapi name, using {j}", file=sys.stderr)
        if target:
            t = f"Ty::Special(\"{SPECIAL[target]}\")" if target in SPECIAL else f"Ty::Msg(&{ident(target)})"
            if kind.startswith("btree_map"):
                t = f"Ty::MapStr(&{t})"
        else:
            t = scalar(kind)
            if f"{name}.{j}" in POINTER_SCALARS:
                t = {"Ty::Bool": "Ty::OptBool", "Ty::Str": "Ty::OptStr"}.get(t, t)
        rows.append(f"        Field {{ tag: {tag}, json: \"{j}\", ty: {t}, repeated: {'true' if repeated else 'false'} }},")
    out.append(f"pub static {ident(name)}: Msg = Msg {{\n    name: \"{name}\",\n    fields: &[\n" + "\n".join(rows) + "\n    ],\n};")
out.append("")
out.append("/// Root messages by `apiVersion` and `kind`.")
out.append("pub static ROOTS: &[(&str, &str, &Msg)] = &[")
for r in ROOTS:
    parts = r.split(".")
    if r.startswith("api."):
        group, version, kind = parts[1], parts[2], parts[3]
        api_version = version if group == "core" else f"{group}/{version}"
        if group in ("coordination", "node", "authentication"):
            api_version = f"{group}.k8s.io/{version}"
    else:
        api_version, kind = "meta.k8s.io/v1", parts[-1]
    out.append(f"    (\"{api_version}\", \"{kind}\", &{ident(r)}),")
out.append("];")
print("\n".join(out))
