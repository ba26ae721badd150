#!/usr/bin/env python3
"""A stand-in Kubernetes API for driftless's Helm tests (tests/helm.rs). A TEST DOUBLE.

No real kube-apiserver can run on a test machine, and the Helm upgrade test only needs a server
that stores objects and answers what helm and kubectl ask: discovery, create, get, list by label,
update, patch and delete. That is what this is, in memory, with the Python standard library only:
- no validation, admission, controllers, watches or OpenAPI document (helm runs with
  --disable-openapi-validation; the manifests are validated strictly by another test);
- patches are a naive JSON merge (strategic-merge directives ignored), server-side apply creates;
- request bodies in Kubernetes' protobuf envelope (helm stores its release Secrets that way) are
  decoded for the two kinds that need it, Secret and ConfigMap.
It listens on 127.0.0.1 only: `fake_kube_api.py PORT`, ready once it prints its URL.
"""
import base64
import json
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# (group, version) -> {plural: (kind, namespaced)}; group "" is the core API under /api/v1.
RESOURCES = {
    ("", "v1"): {
        "namespaces": ("Namespace", False),
        "secrets": ("Secret", True),
        "configmaps": ("ConfigMap", True),
        "services": ("Service", True),
        "serviceaccounts": ("ServiceAccount", True),
        "pods": ("Pod", True),
    },
    ("apps", "v1"): {
        "deployments": ("Deployment", True),
        "statefulsets": ("StatefulSet", True),
    },
}
SHORT_NAMES = {
    "namespaces": ["ns"],
    "services": ["svc"],
    "configmaps": ["cm"],
    "serviceaccounts": ["sa"],
    "deployments": ["deploy"],
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
SEEDED_NAMESPACES = ("default", "kube-system", "demo")


class Store:
    """Objects by (group/version, plural, namespace or None) -> {name: object}."""

    def __init__(self):
        self.lock = threading.Lock()
        self.collections = {}
        self.version = 1
        ns = self.collection("v1", "namespaces", None)
        for name in SEEDED_NAMESPACES:
            ns[name] = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}

    def collection(self, gv, plural, namespace):
        return self.collections.setdefault((gv, plural, namespace), {})

    def all_namespaces(self, gv, plural):
        return [o for (g, p, _), c in self.collections.items() if (g, p) == (gv, plural)
                for o in c.values()]

    def save(self, coll, gv, kind, namespace, name, obj):
        """Stores `obj` as `name`, keeping the uid and creation time of an object it replaces."""
        previous = coll.get(name, {}).get("metadata", {})
        obj.setdefault("apiVersion", gv)
        obj.setdefault("kind", kind)
        meta = obj.setdefault("metadata", {})
        meta["name"] = name
        if namespace is not None:
            meta["namespace"] = namespace
        meta["uid"] = previous.get("uid") or str(uuid.uuid4())
        meta["creationTimestamp"] = previous.get("creationTimestamp") or time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.version += 1
        meta["resourceVersion"] = str(self.version)
        meta.pop("managedFields", None)
        if kind == "Secret" and "stringData" in obj:
            data = obj.setdefault("data", {})
            for key, value in obj.pop("stringData").items():
                data[key] = base64.b64encode(value.encode()).decode()
        coll[name] = obj
        return obj


STORE = Store()


# --- Kubernetes' protobuf envelope ("k8s\0" + runtime.Unknown), just enough for Secret/ConfigMap.

def read_varint(buf, i):
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def fields(buf):
    """[(field number, value)]; length-delimited values stay bytes."""
    out, i = [], 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, i = read_varint(buf, i)
        elif wire_type == 2:
            length, i = read_varint(buf, i)
            value, i = buf[i:i + length], i + length
        elif wire_type == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire_type == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError("unsupported protobuf wire type %d" % wire_type)
        out.append((number, value))
    return out


def string_map(entries, values_as_base64=False):
    """A protobuf map<string, string|bytes> (entries of key=1, value=2) as a dict."""
    out = {}
    for entry in entries:
        kv = dict(fields(entry))
        value = kv.get(2, b"")
        out[kv.get(1, b"").decode()] = (
            base64.b64encode(value).decode() if values_as_base64 else value.decode())
    return out


def decode_protobuf_object(raw):
    if raw[:4] != b"k8s\x00":
        raise ValueError("not a Kubernetes protobuf envelope")
    unknown = dict(fields(raw[4:]))  # runtime.Unknown: 1 typeMeta, 2 raw
    type_meta = dict(fields(unknown.get(1, b"")))  # 1 apiVersion, 2 kind
    body = fields(unknown[2])
    obj = {"apiVersion": type_meta.get(1, b"v1").decode(), "kind": type_meta.get(2, b"").decode(),
           "metadata": {}}
    for number, value in body:
        if number != 1:  # ObjectMeta
            continue
        meta_fields = fields(value)
        meta = obj["metadata"]
        for n, v in meta_fields:
            if n == 1:
                meta["name"] = v.decode()
            elif n == 3:
                meta["namespace"] = v.decode()
            elif n == 6 and v:
                meta["resourceVersion"] = v.decode()
        meta["labels"] = string_map([v for n, v in meta_fields if n == 11])
        meta["annotations"] = string_map([v for n, v in meta_fields if n == 12])
    if obj["kind"] == "Secret":  # 2 data (bytes), 3 type
        obj["data"] = string_map([v for n, v in body if n == 2], values_as_base64=True)
        types = [v for n, v in body if n == 3]
        if types:
            obj["type"] = types[0].decode()
    elif obj["kind"] == "ConfigMap":  # 2 data (strings)
        obj["data"] = string_map([v for n, v in body if n == 2])
    return obj


def merge_patch(target, patch):
    if not isinstance(target, dict) or not isinstance(patch, dict):
        return patch
    out = dict(target)
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            out[key] = merge_patch(out.get(key), value)
        else:
            out[key] = value
    return out


def failure(code, reason, message):
    return code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                  "message": message, "reason": reason, "code": code}


def not_found(plural, name):
    return failure(404, "NotFound", f'{plural} "{name}" not found')


def group_version(group, version):
    return f"{group}/{version}" if group else version


def discovery(parts):
    """The answer to a discovery path, or None."""
    if parts == ["version"]:
        return {"major": "1", "minor": "32", "gitVersion": "v1.32.0-driftless-fake",
                "platform": "linux/amd64"}
    if parts == ["api"]:
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
    if parts == ["apis"]:
        groups = []
        for (group, version) in RESOURCES:
            if group:
                gv = {"groupVersion": f"{group}/{version}", "version": version}
                groups.append({"name": group, "versions": [gv], "preferredVersion": gv})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    key = ("", "v1") if parts == ["api", "v1"] else (
        (parts[1], parts[2]) if len(parts) == 3 and parts[0] == "apis" else None)
    if key in RESOURCES:
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": group_version(*key), "resources": [
                    {"name": plural, "singularName": kind.lower(), "namespaced": namespaced,
                     "kind": kind, "verbs": VERBS, "shortNames": SHORT_NAMES.get(plural, [])}
                    for plural, (kind, namespaced) in RESOURCES[key].items()]}
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        if "-v" in sys.argv:
            sys.stderr.write("%s %s\n" % (self.command, self.path))

    def request_body(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "protobuf" in (self.headers.get("Content-Type") or ""):
            return decode_protobuf_object(raw)
        return json.loads(raw or b"{}")

    def route(self):
        url = urllib.parse.urlparse(self.path)
        parts = [p for p in url.path.split("/") if p]
        answer = discovery(parts)
        if answer is not None:
            return 200, answer
        if parts[:2] == ["api", "v1"]:
            key, rest = ("", "v1"), parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis" and (parts[1], parts[2]) in RESOURCES:
            key, rest = (parts[1], parts[2]), parts[3:]
        else:
            return failure(404, "NotFound", "the server could not find the requested resource")
        namespace = None
        # namespaces/<ns>/<plural>[/<name>]; `namespaces/<name>` alone is the namespace itself.
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        table = RESOURCES[key]
        if not rest or rest[0] not in table:
            return failure(404, "NotFound", "unknown resource")
        plural, name = rest[0], (rest[1] if len(rest) > 1 else None)
        kind = table[plural][0]
        gv = group_version(*key)
        with STORE.lock:
            return self.act(gv, plural, kind, namespace, name, urllib.parse.parse_qs(url.query))

    def act(self, gv, plural, kind, namespace, name, query):
        coll = STORE.collection(gv, plural, namespace)
        method = self.command
        if name is None and method == "GET":
            items = list(coll.values()) if namespace is not None else STORE.all_namespaces(
                gv, plural)
            selector = query.get("labelSelector", [""])[0]
            for term in filter(None, selector.split(",")):
                label, _, value = term.partition("=")
                items = [o for o in items
                         if o.get("metadata", {}).get("labels", {}).get(label) == value]
            return 200, {"kind": kind + "List", "apiVersion": gv,
                         "metadata": {"resourceVersion": str(STORE.version)}, "items": items}
        if name is None and method == "POST":
            obj = self.request_body()
            name = obj.get("metadata", {}).get("name")
            if name in coll:
                return failure(409, "AlreadyExists", f'{plural} "{name}" already exists')
            return 201, STORE.save(coll, gv, kind, namespace, name, obj)
        if name is None:
            return failure(405, "MethodNotAllowed", method)
        if method == "GET":
            return (200, coll[name]) if name in coll else not_found(plural, name)
        if method == "DELETE":
            return (200, coll.pop(name)) if name in coll else not_found(plural, name)
        if method == "PUT":
            if name not in coll:
                return not_found(plural, name)
            return 200, STORE.save(coll, gv, kind, namespace, name, self.request_body())
        if method == "PATCH":
            patch = self.request_body()
            if name in coll:
                return 200, STORE.save(coll, gv, kind, namespace, name,
                                       merge_patch(coll[name], patch))
            if "apply-patch" in (self.headers.get("Content-Type") or ""):
                return 201, STORE.save(coll, gv, kind, namespace, name, patch)
            return not_found(plural, name)
        return failure(405, "MethodNotAllowed", method)

    def answer(self):
        try:
            code, body = self.route()
        except Exception as e:  # a bug here must reach the test as an error, not a hang
            code, body = failure(500, "InternalError", repr(e))
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = answer


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print(f"fake Kubernetes API on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()
