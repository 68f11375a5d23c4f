#!/usr/bin/env python3
"""Regenerate fuzz/seeds/api_decode/: one protobuf-encoded request per message type that the
api_decode target dispatches on (first byte = selector), carrying objects converted from
manifests/*.yaml. Run from anywhere: python3 fuzz/seeds/gen_api_decode.py (needs PyYAML)."""
import json, pathlib, yaml

root = pathlib.Path(__file__).resolve().parents[2]
out = root / "fuzz" / "seeds" / "api_decode"

def varint(n):
    b = bytearray()
    while True:
        x = n & 0x7F
        n >>= 7
        b.append(x | (0x80 if n else 0))
        if not n:
            return bytes(b)

def field_bytes(num, data):  # wire type 2
    if isinstance(data, str):
        data = data.encode()
    return varint(num << 3 | 2) + varint(len(data)) + data

def field_varint(num, v):  # wire type 0
    return varint(num << 3) + varint(v)

def key(kind, ns, name):
    return field_bytes(1, kind) + field_bytes(2, ns) + field_bytes(3, name)

objs = {}
for f in ["hello.yaml", "multi-tier.yaml"]:
    for d in yaml.safe_load_all((root / "manifests" / f).read_text()):
        if d:
            objs.setdefault(d["kind"], json.dumps(d, separators=(",", ":")).encode())
dep, svc = objs["Deployment"], objs["Service"]
sel = "app=hello,tier!=db,env in (prod,staging),canary,!legacy"

seeds = {
    "create": bytes([0]) + field_bytes(1, dep),
    "update": bytes([1]) + field_bytes(1, svc) + field_varint(2, 1),
    "apply": bytes([2]) + field_bytes(1, dep),
    "get": bytes([3]) + field_bytes(1, key("Deployment", "default", "hello")),
    "list": bytes([4]) + field_bytes(1, "pods") + field_bytes(2, "default") + field_bytes(3, sel),
    "delete": bytes([5]) + field_bytes(1, key("svc", "default", "hello")) + field_varint(2, 7),
    "batch": bytes([6])
    + field_bytes(1, field_bytes(1, field_bytes(1, dep)))  # create
    + field_bytes(1, field_bytes(3, field_bytes(1, svc)))  # update_status
    + field_bytes(1, field_bytes(4, field_bytes(1, key("Pod", "default", "hello-1")))),  # delete
    "watch": bytes([7]) + field_bytes(1, "Deployment") + field_bytes(3, sel) + field_varint(4, 42),
    "join": bytes([9]) + field_bytes(1, "127.0.0.1:7001"),
    "raw_object": bytes([11]) + svc,
}
out.mkdir(parents=True, exist_ok=True)
for name, data in seeds.items():
    (out / name).write_bytes(data)
print(f"wrote {len(seeds)} seeds to {out}")
