# Sourced by the measurement scripts (chaos, soak, load): brings the local stack up with
# `scripts/dev.sh` in a process group of its own, without code reloads, and a token whose
# tier has a limit no measurement reaches (the limiter still does its write per request).
#   stack_up OUT_DIR [VAR=value ...]   (extra environment for dev.sh, e.g. WORKERS=2)
# Sets BIN, exports dev.env's variables and IHUB_TOKEN; stops the stack on exit.

BIN="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug"

stack_up() {
  local out=$1; shift
  # Every binary in one invocation, as dev.sh builds them (the load generator among
  # them): `-p` alone would compile another variant of the dependencies, for minutes.
  cargo build -q --workspace --bins
  rm -f .local/dev.env
  env IHUB_DEV_NO_RELOAD=1 IHUB_GATEWAY_RATE_LIMIT_TIERS=load=1000000000 "$@" \
    setsid scripts/dev.sh >"$out/dev.log" 2>&1 &
  STACK_PID=$!
  trap stack_down EXIT
  for _ in $(seq 1 900); do
    [ -f .local/dev.env ] && break
    kill -0 "$STACK_PID" 2>/dev/null || { echo "make dev exited early:"; tail -40 "$out/dev.log"; exit 1; }
    sleep 1
  done
  [ -f .local/dev.env ] || { echo "the stack did not come up in 15 minutes"; exit 1; }
  set -a; . .local/dev.env; set +a
  IHUB_TOKEN="$("$BIN/inferencehub-dev" mint-token --keys-dir .local/jwt --issuer "$IHUB_GATEWAY_JWT_ISSUER" \
    --audience "$IHUB_GATEWAY_JWT_AUDIENCE" --sub load --scope predict --tier load --ttl 4h)"
  export IHUB_TOKEN
}

# Extra clean-up a script adds before the stack stops (e.g. continuing stopped processes).
stack_before_down() { :; }

stack_down() {
  stack_before_down
  kill -TERM "$STACK_PID" 2>/dev/null || true
  wait "$STACK_PID" 2>/dev/null || true
}
