#!/usr/bin/env bash
# `make fuzz-api`: schemathesis against the local stack with a valid token, driven by the
# committed docs/openapi.json: every operation, generated and mutated requests, all its
# checks (no 5xx; status, headers and bodies as documented) except "a schema-valid request
# must be accepted": whether an input is valid depends on the model it names (its feature
# count, its prompt limit), which one document for every model cannot state.
# EXAMPLES per operation (default 200; CI runs 25). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."

EXAMPLES="${1:-${EXAMPLES:-200}}"
OUT=.local/fuzz-api
rm -rf "$OUT"
mkdir -p "$OUT"
. scripts/lib/stack.sh
stack_up "$OUT"

.cache/schemathesis/bin/schemathesis run docs/openapi.json \
  --url "$IHUB_V2_URL" \
  --header "Authorization: Bearer $IHUB_TOKEN" \
  --max-examples "$EXAMPLES" \
  --checks all --exclude-checks positive_data_acceptance \
  --request-timeout 30 \
  --report junit --report-dir "$OUT" \
  --no-color 2>&1 | tee "$OUT/schemathesis.log"
