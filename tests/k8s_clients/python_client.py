"""The Python `kubernetes` client (PyPI) against Berth, as a release pipeline would use it:
list, create, watch, strategic-merge and JSON patch, scale, read, delete Deployments.

Run by tests/kubectl.rs with KUBECONFIG set; prints one line per step and "python client ok".
"""
import os
import sys
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

NS = "default"
NAME = "py-web"


def step(msg):
    print(msg, flush=True)


def main():
    config.load_kube_config(config_file=os.environ["KUBECONFIG"])
    apps = client.AppsV1Api()
    core = client.CoreV1Api()

    before = apps.list_namespaced_deployment(NS)
    rv = before.metadata.resource_version
    step(f"listed {len(before.items)} deployments at resourceVersion {rv}")

    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": NAME, "labels": {"app": NAME}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": NAME}},
            "template": {
                "metadata": {"labels": {"app": NAME}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27",
                                          "ports": [{"containerPort": 80}]}]},
            },
        },
    }
    created = apps.create_namespaced_deployment(NS, body)
    assert created.metadata.name == NAME and created.metadata.uid, created.metadata
    step(f"created {NAME} uid {created.metadata.uid}")

    try:
        apps.create_namespaced_deployment(NS, body)
        raise AssertionError("a second create succeeded")
    except ApiException as e:
        assert e.status == 409, e
        step("second create: 409 AlreadyExists")

    # Watch from the list's resourceVersion: the create shows up as ADDED.
    w = watch.Watch()
    seen = None
    for ev in w.stream(apps.list_namespaced_deployment, NS, resource_version=rv,
                       timeout_seconds=20):
        if ev["object"].metadata.name == NAME:
            seen = ev["type"]
            w.stop()
    assert seen == "ADDED", seen
    step("watch saw ADDED")

    # kubectl-style strategic merge patch: the container merges by name.
    patched = apps.patch_namespaced_deployment(
        NAME, NS, {"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "nginx:1.28"}]}}}})
    c = patched.spec.template.spec.containers
    assert len(c) == 1 and c[0].image == "nginx:1.28" and c[0].ports[0].container_port == 80, c
    assert patched.metadata.generation == 2, patched.metadata.generation
    step("strategic merge patch kept the ports and bumped generation to 2")

    # A JSON patch (a list body) of the labels.
    patched = apps.patch_namespaced_deployment(
        NAME, NS, [{"op": "add", "path": "/metadata/labels/tier", "value": "front"}])
    assert patched.metadata.labels["tier"] == "front", patched.metadata.labels
    step("JSON patch added a label")

    scale = apps.patch_namespaced_deployment_scale(NAME, NS, {"spec": {"replicas": 3}})
    assert scale.spec.replicas == 3, scale
    assert apps.read_namespaced_deployment(NAME, NS).spec.replicas == 3
    step("scaled to 3 through the scale subresource")

    # A stale resourceVersion is a 409 Conflict.
    stale = apps.read_namespaced_deployment(NAME, NS)
    stale.metadata.resource_version = "1"
    try:
        apps.replace_namespaced_deployment(NAME, NS, stale)
        raise AssertionError("a stale replace succeeded")
    except ApiException as e:
        assert e.status == 409, e
        step("stale replace: 409 Conflict")

    # Label selector and paging.
    page = apps.list_namespaced_deployment(NS, label_selector=f"app={NAME}", limit=1)
    assert [d.metadata.name for d in page.items] == [NAME], page.items

    pods = core.list_namespaced_pod(NS, label_selector=f"app={NAME}")
    step(f"{len(pods.items)} pods carry app={NAME}")

    apps.delete_namespaced_deployment(NAME, NS)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            apps.read_namespaced_deployment(NAME, NS)
            time.sleep(0.2)
        except ApiException as e:
            assert e.status == 404, e
            break
    else:
        raise AssertionError("the deployment was not deleted")
    step("deleted; read answers 404")
    print("python client ok", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - print what failed for the Rust test's message
        print(f"FAILED: {e!r}", file=sys.stderr, flush=True)
        raise
