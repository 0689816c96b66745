#!/usr/bin/env bash
# Runs inside LocalStack once it is ready: creates the rate-limit table with the key
# schema and TTL of template.yaml (pk: string hash key, on-demand, TTL on expires_at).
set -euo pipefail
table="${IHUB_GATEWAY_RATE_LIMIT_TABLE:-inferencehub-rate-limits}"
if ! awslocal dynamodb describe-table --table-name "$table" >/dev/null 2>&1; then
  awslocal dynamodb create-table \
    --table-name "$table" \
    --attribute-definitions AttributeName=pk,AttributeType=S \
    --key-schema AttributeName=pk,KeyType=HASH \
    --billing-mode PAY_PER_REQUEST
  awslocal dynamodb wait table-exists --table-name "$table"
fi
awslocal dynamodb update-time-to-live --table-name "$table" \
  --time-to-live-specification Enabled=true,AttributeName=expires_at >/dev/null 2>&1 || true
echo "rate-limit table $table ready"
