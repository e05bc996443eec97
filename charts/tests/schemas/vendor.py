#!/usr/bin/env python3
"""Regenerates the Kubernetes 1.29 JSON schemas under v1.29.0-standalone-strict/ from the
"local-strict" schemas shipped in the PyPI package kubernetes-validate (1.37.0), for the
kinds the charts render. Each output file is self-contained: the definitions it refers to
are copied under its own "$defs" (a "$ref" to "#/$defs/NAME"; JSON Schema 2020-12), so
kubeconform needs no other file and no network.

    python3 -m pip download --no-deps kubernetes-validate==1.37.0 -d /tmp/kv
    python3 charts/tests/schemas/vendor.py /tmp/kv/kubernetes_validate-1.37.0-py3-none-any.whl
"""
import json
import sys
import zipfile
from pathlib import Path

KINDS = ["statefulset-apps-v1", "deployment-apps-v1", "service-v1", "configmap-v1",
         "secret-v1", "poddisruptionbudget-policy-v1"]
SRC = "kubernetes_validate/kubernetes-json-schema/v1.29.0-local-strict/"
OUT = Path(__file__).resolve().parent / "v1.29.0-standalone-strict"


def refs(node, found):
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and "#/$defs/" in ref:
            name = ref.split("#/$defs/", 1)[1]
            node["$ref"] = "#/$defs/" + name
            found.add(name)
        for v in node.values():
            refs(v, found)
    elif isinstance(node, list):
        for v in node:
            refs(v, found)


def main(wheel):
    with zipfile.ZipFile(wheel) as z:
        defs = json.loads(z.read(SRC + "_definitions.json"))["$defs"]
        OUT.mkdir(exist_ok=True)
        for kind in KINDS:
            schema = json.loads(z.read(SRC + kind + ".json"))
            todo, done = set(), {}
            refs(schema, todo)
            while todo:
                name = todo.pop()
                if name in done:
                    continue
                d = json.loads(json.dumps(defs[name]))
                done[name] = d
                more = set()
                refs(d, more)
                todo |= more - set(done)
            schema.pop("$id", None)
            schema["$defs"] = dict(sorted(done.items()))
            (OUT / (kind + ".json")).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
            print("%s: %d definitions" % (kind, len(done)))


if __name__ == "__main__":
    main(sys.argv[1])
