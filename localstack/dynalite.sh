#!/usr/bin/env bash
# The no-Docker fallback for local DynamoDB: runs dynalite (a DynamoDB-compatible server
# on Node.js) in the foreground on the same port LocalStack uses, so both expose the same
# endpoint contract: AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:${PORT}.
# Data lives in memory and is gone when it stops. Usage: localstack/dynalite.sh [PORT]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
port="${1:-${IHUB_DYNAMODB_PORT:-4566}}"
if [ ! -x "$here/node_modules/.bin/dynalite" ]; then
  npm ci --prefix "$here" --no-audit --no-fund --silent
fi
echo "dynalite: AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:${port}"
exec "$here/node_modules/.bin/dynalite" --port "$port"
