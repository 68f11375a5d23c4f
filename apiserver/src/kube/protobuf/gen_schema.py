#!/usr/bin/env python3
"""Generate schema.txt, the wire schema of the Kubernetes protobuf messages Berth decodes, from
the prost-generated sources of the `k8s-pb` crate (kube-rs/k8s-pb, Apache-2.0, generated from
Kubernetes' own generated.proto files).

    python3 apiserver/src/kube/protobuf/gen_schema.py ~/.cargo/registry/src/*/k8s-pb-0.9.0/src \
        > apiserver/src/kube/protobuf/schema.txt

Only the messages reachable from the kinds Berth serves (and DeleteOptions, Scale) are kept.
Each field's JSON name is the first word of its doc comment when that is the field name (the
Kubernetes convention: "podIP address allocated to the pod"), else the snake_case name in
lowerCamelCase. Format:

    M <message>
    F <tag> <jsonName> <label: one|rep|map> <type>      type: scalar | msg:<message> | map value
"""
import os
import re
import sys

ROOTS = [
    "api.core.v1.Pod", "api.core.v1.Service", "api.core.v1.Endpoints", "api.core.v1.Node",
    "api.core.v1.Event", "api.core.v1.ConfigMap", "api.core.v1.Secret", "api.core.v1.Namespace",
    "api.apps.v1.Deployment", "api.apps.v1.ReplicaSet", "api.autoscaling.v1.Scale",
    "apimachinery.pkg.apis.meta.v1.DeleteOptions", "apimachinery.pkg.runtime.Unknown",
]
PACKAGES = ["api/core/v1", "api/apps/v1", "api/autoscaling/v1", "apimachinery/pkg/apis/meta/v1",
            "apimachinery/pkg/api/resource", "apimachinery/pkg/util/intstr",
            "apimachinery/pkg/runtime"]

ATTR = re.compile(r'#\[prost\((.*)\)\]')


# Kubernetes spells these initialisms in capitals inside JSON names (hostIP, volumeID,
# podCIDRs, systemUUID); prost's snake_case lost that.
INITIALISMS = {"ip": "IP", "ips": "IPs", "id": "ID", "ids": "IDs", "cidr": "CIDR",
               "cidrs": "CIDRs", "url": "URL", "fqdn": "FQDN", "uuid": "UUID", "wwns": "WWNs"}


def camel(snake):
    if snake.startswith("r#"):
        snake = snake[2:]
    parts = snake.split("_")
    rest = [INITIALISMS.get(p, p[:1].upper() + p[1:]) for p in parts[1:]]
    return parts[0] + "".join(rest)


def resolve(module, rust_type):
    rust_type = rust_type.strip()
    segs = rust_type.split("::")
    up = 0
    while segs and segs[0] == "super":
        up += 1
        segs = segs[1:]
    base = module[: len(module) - up] if up else module
    return ".".join(base + segs)


def parse(src_root, pkg):
    module = pkg.split("/")
    text = open(os.path.join(src_root, pkg, "mod.rs")).read()
    messages = {}
    current = None
    docs = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        m = re.match(r"pub struct (\w+) \{", line)
        if m:
            current = ".".join(module + [m.group(1)])
            messages[current] = []
            docs = []
        elif line.startswith("///"):
            docs.append(line[3:].strip())
        elif line.startswith("#[prost(") and current:
            attr = ATTR.match(line).group(1)
            # The field: `pub name: Type,` possibly over several lines.
            j = i + 1
            decl = ""
            while True:
                decl += " " + lines[j].strip()
                if decl.rstrip().endswith(",") and decl.count("<") == decl.count(">"):
                    break
                j += 1
            i = j
            fm = re.match(r"\s*pub ([\w#]+):\s*(.*),$", decl)
            name, ty = fm.group(1), fm.group(2)
            tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
            json = camel(name)
            first = docs[0].split(" ")[0] if docs else ""
            if first[:1].islower() and first.replace("_", "").lower() == json.lower():
                json = first
            kind = attr.split(",")[0].strip()
            label = "rep" if "repeated" in attr else "one"
            if kind.startswith("btree_map") or kind.startswith("map"):
                kv = re.search(r'map = "([^"]+)"', attr).group(1).split(",")
                key, val = kv[0].strip(), kv[1].strip()
                if val == "message":
                    inner = re.search(r"BTreeMap<\s*[^,]+,\s*(.*?)\s*,?\s*>$", ty).group(1)
                    val = "msg:" + resolve(module, inner)
                typ = f"{key}/{val}"
                label = "map"
            elif kind == "message":
                inner = re.search(r"(?:Option|Vec)<\s*(.*?)\s*,?\s*>$", ty).group(1)
                typ = "msg:" + resolve(module, inner)
            elif kind == "bytes = \"vec\"":
                typ = "bytes"
            else:
                typ = kind
            messages[current].append((tag, json, label, typ))
            docs = []
        elif line.startswith("}"):
            docs = []
        elif not line.startswith("#"):
            docs = [] if not line else docs
        i += 1
    return messages


def main():
    src_root = sys.argv[1]
    all_msgs = {}
    for pkg in PACKAGES:
        all_msgs.update(parse(src_root, pkg))
    keep, todo = set(), list(ROOTS)
    while todo:
        m = todo.pop()
        if m in keep:
            continue
        if m not in all_msgs:
            raise SystemExit(f"unknown message {m}")
        keep.add(m)
        for (_, _, _, typ) in all_msgs[m]:
            ref = typ.split("msg:", 1)[1] if "msg:" in typ else None
            if ref:
                todo.append(ref)
    print("# generated by gen_schema.py from k8s-pb; do not edit")
    for m in sorted(keep):
        print(f"M {m}")
        for (tag, json, label, typ) in all_msgs[m]:
            print(f"F {tag} {json} {label} {typ}")


main()
