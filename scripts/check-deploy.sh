#!/usr/bin/env bash
# Offline checks of deploy/: Kubernetes manifests against the Kubernetes schemas (and the
# PodMonitor against the part of its CRD it uses), the Dockerfile with hadolint, and the Helm
# values and Grafana dashboard as well-formed documents. The dashboard's metric names are
# checked against a running sidecar by tests/integration/operability.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh
ensure_deploy_checkers
export PYTHONPATH="$DEPLOY_CHECKERS"

k8s=(deploy/kubernetes/configmap.yaml deploy/kubernetes/deployment.yaml)
"$DEPLOY_CHECKERS/bin/kubernetes-validate" --strict --quiet "${k8s[@]}"
"$DEPLOY_CHECKERS/bin/hadolint" --failure-threshold info deploy/Dockerfile
python3 - <<'PY'
import json, yaml, jsonschema
schema = json.load(open("deploy/schemas/podmonitor.json"))
jsonschema.validate(yaml.safe_load(open("deploy/kubernetes/podmonitor.yaml")), schema)
values = yaml.safe_load(open("deploy/helm/nats-values.yaml"))
assert values["config"]["jetstream"]["enabled"] and values["config"]["cluster"]["replicas"] == 3
dashboard = json.load(open("deploy/grafana/nearkv-dashboard.json"))
assert all(t["expr"] for p in dashboard["panels"] for t in p["targets"])
PY
echo "deploy/: kubernetes manifests, PodMonitor, Dockerfile, Helm values and dashboard: ok"
