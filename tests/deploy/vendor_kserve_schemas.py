"""Vendor the parts of KServe's CRD schemas that deploy/kserve/ uses into tests/deploy/schemas/.

    python tests/deploy/vendor_kserve_schemas.py --git-dir PATH/TO/kserve[.git] --rev v0.20.0

reads ``config/crd/full/serving.kserve.io_{servingruntimes,inferenceservices}.yaml`` at that
revision (``git show``: a bare clone will do) and writes one JSON file per CRD holding the
served version's ``openAPIV3Schema``, unchanged except for pruning. The whole schemas are large
(the InferenceService's is 690 kB of JSON: every framework's predictor, transformer, explainer,
canary and status repeat a PodSpec), so only the subtrees under ``KEEP`` are copied whole. Every
other property of an object on the way to a kept subtree keeps its name but its schema becomes
``{"x-bnserve-not-vendored": true}``, which ``support.crd_schema`` turns into "reject any
value": a manifest that starts using such a field fails with a message naming this script,
instead of passing unchecked. Add the field's path to ``KEEP`` and run this again.

The tests never run this script (they read the JSON it wrote); it needs PyYAML and git.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parent / "schemas"
REPOSITORY = "https://github.com/kserve/kserve"
NOT_VENDORED = {"x-bnserve-not-vendored": True}

# kind -> (CRD file in KServe's repository, version, dotted paths kept whole). A path walks
# `properties` only; a list's items are kept whole with the list.
CRDS = {
    "ServingRuntime": (
        "config/crd/full/serving.kserve.io_servingruntimes.yaml",
        "v1alpha1",
        [
            "apiVersion", "kind", "metadata",
            # what deploy/kserve/servingruntime.yaml uses, and what a runtime commonly adds
            "spec.annotations", "spec.labels", "spec.supportedModelFormats",
            "spec.protocolVersions", "spec.multiModel", "spec.disabled", "spec.containers",
            "spec.volumes", "spec.imagePullSecrets", "spec.nodeSelector", "spec.tolerations",
            "spec.affinity",
        ],
    ),
    "InferenceService": (
        "config/crd/full/serving.kserve.io_inferenceservices.yaml",
        "v1beta1",
        [
            "apiVersion", "kind", "metadata",
            "spec.predictor.model",
            "spec.predictor.minReplicas", "spec.predictor.maxReplicas",
            "spec.predictor.scaleMetric", "spec.predictor.scaleMetricType",
            "spec.predictor.scaleTarget", "spec.predictor.terminationGracePeriodSeconds",
            "spec.predictor.enableServiceLinks", "spec.predictor.serviceAccountName",
            "spec.predictor.imagePullSecrets", "spec.predictor.nodeSelector",
            "spec.predictor.tolerations", "spec.predictor.securityContext",
            "spec.predictor.annotations", "spec.predictor.labels", "spec.predictor.timeout",
        ],
    ),
}


def prune(schema: dict, keep: list[list[str]]) -> dict:
    """``schema`` with only the ``keep`` paths' subtrees; other properties are stubbed."""
    if [] in keep:
        return schema
    pruned = {key: value for key, value in schema.items() if key != "properties"}
    properties = {}
    for name, sub in schema.get("properties", {}).items():
        below = [path[1:] for path in keep if path[0] == name]
        properties[name] = prune(sub, below) if below else dict(NOT_VENDORED)
    missing = {path[0] for path in keep} - set(properties)
    if missing:
        raise SystemExit(f"KEEP names properties the CRD does not have: {sorted(missing)}")
    pruned["properties"] = properties
    return pruned


def git(git_dir: str, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", git_dir, *args], check=True,
                          capture_output=True, text=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--git-dir", required=True, help="a clone of kserve/kserve (its .git)")
    parser.add_argument("--rev", required=True, help="a tag or commit, e.g. v0.20.0")
    args = parser.parse_args()
    commit = git(args.git_dir, "rev-parse", f"{args.rev}^{{commit}}").strip()
    OUT.mkdir(exist_ok=True)
    for kind, (path, version, keep) in CRDS.items():
        crd = yaml.safe_load(git(args.git_dir, "show", f"{commit}:{path}"))
        assert crd["spec"]["names"]["kind"] == kind, path
        (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
        schema = prune(served["schema"]["openAPIV3Schema"], [p.split(".") for p in keep])
        document = {
            "$comment": "Pruned copy of a KServe CRD's openAPIV3Schema, written by "
            "tests/deploy/vendor_kserve_schemas.py. KServe is licensed under the Apache "
            "License 2.0 (LICENSE-kserve beside this file). Properties whose schema is "
            '{"x-bnserve-not-vendored": true} exist in the CRD but were not copied.',
            "source": {
                "repository": REPOSITORY,
                "revision": args.rev,
                "commit": commit,
                "path": path,
                "license": "Apache-2.0",
            },
            "group": crd["spec"]["group"],
            "kind": kind,
            "version": version,
            "kept": keep,
            "openAPIV3Schema": schema,
        }
        target = OUT / f"{kind.lower()}-{version}.json"
        target.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
        print(f"wrote {target} ({target.stat().st_size} bytes)")
    (OUT / "LICENSE-kserve").write_text(git(args.git_dir, "show", f"{commit}:LICENSE"))


if __name__ == "__main__":
    main()
