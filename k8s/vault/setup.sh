#!/usr/bin/env sh
# Configure Vault (or OpenBao) for the credential broker. Idempotent: run it again to
# update. Used as is by the test suite (against OpenBao) and by the Kubernetes docs (a Job).
#
# Connection (the standard client variables):
#   VAULT_ADDR, VAULT_CACERT, VAULT_TOKEN   an administrator token (used only here)
#   VAULT_CLI                               the CLI to run (default: vault; OpenBao: bao)
#
# The broker's identity (at least one of the two auth methods):
#   BROKER_SPIFFE_ID        required, e.g. spiffe://example.org/ns/credential-broker/sa/credential-broker
#
#   `jwt` auth (a JWT-SVID; recommended: Vault follows SPIRE's key rotation by itself), one of
#   JWT_SVID_OIDC_DISCOVERY_URL  SPIRE's OIDC discovery provider, e.g. https://spire-oidc.spire.svc:
#                           Vault reads <url>/.well-known/openid-configuration (whose issuer
#                           must be <url>), fetches the keys it names and refetches them when
#                           a token names a key it has not seen (SPIRE's next key)
#   JWT_SVID_JWKS_URL       the provider's key set, e.g. https://spire-oidc.spire.svc/keys
#                           (refetched the same way); JWT_SVID_ISSUER is required with it
#   JWT_SVID_PUBKEY_FILE    PEM public key(s): a static copy that SPIRE's next JWT key
#                           rotation invalidates (ca_ttl): tests and experiments only
#   and
#   JWT_SVID_CA_FILE        PEM CA of the provider's TLS certificate, when not a public CA
#                           (oidc_discovery_ca_pem / jwks_ca_pem)
#   JWT_SVID_ISSUER         bound_issuer: the JWT-SVIDs' `iss`, i.e. the SPIRE server's
#                           jwt_issuer (default: JWT_SVID_OIDC_DISCOVERY_URL). Vault checks
#                           `iss` only against this, not against the discovery document.
#   JWT_SVID_AUDIENCE       audience the broker asks for (default: vault)
#
#   `cert` auth (mTLS with the broker's X.509-SVID; the SVID needs a DNS name, for a CN)
#   SPIFFE_BUNDLE_FILE      PEM X.509 bundle of the trust domain. Vault keeps this copy: it
#                           does not follow SPIRE's CA rotation. Run this script again with a
#                           fresh bundle more often than SPIRE rotates (k8s/vault/README.md).
#
#   BROKER_TOKEN_TTL        TTL of the broker's Vault token (default: 1h)
#
# Secrets engines (each optional):
#   PG_CONNECTION_URL       e.g. postgresql://{{username}}:{{password}}@db:5432/app?sslmode=require
#   PG_ADMIN_USER, PG_ADMIN_PASSWORD   the account Vault uses to create and drop roles
#   DB_ROLE                 database role name (default: ticketing), DB_TTL (default: 5m)
#   DB_SCHEMA               the schema its credentials may read (default: public)
#   DB_TABLES               comma-separated tables of DB_SCHEMA they may SELECT from
#                           (default: every table of the schema); nothing else is granted
#   KV_MOUNT                KV v2 mount (default: secret); the broker reads KV_PREFIX/* (default: tools)
#   TOOL_POLICY             policy child tokens may carry (default: broker-tool); its rules are
#                           read from TOOL_POLICY_FILE when set
set -eu

cli="${VAULT_CLI:-vault}"
: "${BROKER_SPIFFE_ID:?BROKER_SPIFFE_ID is required}"
audience="${JWT_SVID_AUDIENCE:-vault}"
token_ttl="${BROKER_TOKEN_TTL:-1h}"
db_role="${DB_ROLE:-ticketing}"
db_ttl="${DB_TTL:-5m}"
db_schema="${DB_SCHEMA:-public}"
db_tables="${DB_TABLES:-}"
kv_mount="${KV_MOUNT:-secret}"
kv_prefix="${KV_PREFIX:-tools}"
tool_policy="${TOOL_POLICY:-broker-tool}"

enabled() { "$cli" "$1" list -format=json | grep -q "\"$2/\""; }
fail() { echo "setup.sh: $*" >&2; exit 2; }
identifier() {  # a safe SQL identifier list: letters, digits, underscores (and commas)
  case "$1" in '' | *[!A-Za-z0-9_,]*) fail "$2 must be SQL identifiers ([A-Za-z0-9_], comma-separated): $1" ;; esac
}

echo "policy credential-broker"
"$cli" policy write credential-broker - <<POLICY
# Dynamic secrets: read credentials, shorten and revoke their leases.
path "database/creds/*"           { capabilities = ["read"] }
path "sys/leases/renew"           { capabilities = ["update"] }
path "sys/leases/revoke"          { capabilities = ["update"] }
path "sys/leases/lookup"          { capabilities = ["update"] }
# Child tokens for tools of kind "token", only through the broker-tools role.
path "auth/token/create/broker-tools" { capabilities = ["update"] }
path "auth/token/revoke-accessor" { capabilities = ["update"] }
path "auth/token/lookup-accessor" { capabilities = ["update"] }
path "auth/token/lookup-self"     { capabilities = ["read"] }
# Static secrets, handed over only inside response-wrapping tokens.
path "${kv_mount}/data/${kv_prefix}/*" { capabilities = ["read"] }
# The orphan sweep: what Vault created for a request whose answer the broker never saw
# (a timeout) is found and revoked. Vault requires sudo to LIST these two paths; the
# accessors are looked up (metadata, never a token) and revoked with the grants above.
path "sys/leases/lookup/database/creds/*" { capabilities = ["list", "sudo"] }
path "auth/token/accessors"       { capabilities = ["list", "sudo"] }
POLICY

if [ -n "${TOOL_POLICY_FILE:-}" ]; then
  "$cli" policy write "$tool_policy" "$TOOL_POLICY_FILE"
else
  "$cli" policy write "$tool_policy" - <<POLICY
path "auth/token/lookup-self" { capabilities = ["read"] }
POLICY
fi
echo "token role broker-tools"
"$cli" write auth/token/roles/broker-tools \
  allowed_policies="$tool_policy" token_explicit_max_ttl=300 renewable=false >/dev/null

if [ -n "${SPIFFE_BUNDLE_FILE:-}" ]; then
  echo "cert auth bound to $BROKER_SPIFFE_ID"
  enabled auth cert || "$cli" auth enable cert >/dev/null
  "$cli" write auth/cert/certs/credential-broker \
    certificate=@"$SPIFFE_BUNDLE_FILE" allowed_uri_sans="$BROKER_SPIFFE_ID" \
    token_policies=credential-broker token_ttl="$token_ttl" token_max_ttl="$token_ttl" >/dev/null
fi

jwt_sources="${JWT_SVID_OIDC_DISCOVERY_URL:+ discovery}${JWT_SVID_JWKS_URL:+ jwks}${JWT_SVID_PUBKEY_FILE:+ pubkeys}"
if [ -n "$jwt_sources" ]; then
  case "$jwt_sources" in " "*" "*) fail "set one of JWT_SVID_OIDC_DISCOVERY_URL, JWT_SVID_JWKS_URL, JWT_SVID_PUBKEY_FILE" ;; esac
  echo "jwt auth bound to $BROKER_SPIFFE_ID (audience $audience, keys from:$jwt_sources)"
  enabled auth jwt || "$cli" auth enable jwt >/dev/null
  if [ -n "${JWT_SVID_CA_FILE:-}" ] && [ ! -r "$JWT_SVID_CA_FILE" ]; then
    fail "cannot read JWT_SVID_CA_FILE $JWT_SVID_CA_FILE"
  fi
  # Written whole each time: switching the key source leaves nothing of the previous one.
  set --
  if [ -n "${JWT_SVID_OIDC_DISCOVERY_URL:-}" ]; then
    set -- oidc_discovery_url="$JWT_SVID_OIDC_DISCOVERY_URL"
    if [ -n "${JWT_SVID_CA_FILE:-}" ]; then set -- "$@" oidc_discovery_ca_pem=@"$JWT_SVID_CA_FILE"; fi
  elif [ -n "${JWT_SVID_JWKS_URL:-}" ]; then
    set -- jwks_url="$JWT_SVID_JWKS_URL"
    if [ -n "${JWT_SVID_CA_FILE:-}" ]; then set -- "$@" jwks_ca_pem=@"$JWT_SVID_CA_FILE"; fi
  else
    set -- jwt_validation_pubkeys=@"$JWT_SVID_PUBKEY_FILE"
  fi
  issuer="${JWT_SVID_ISSUER:-${JWT_SVID_OIDC_DISCOVERY_URL:-}}"
  if [ -n "${JWT_SVID_JWKS_URL:-}" ] && [ -z "$issuer" ]; then
    fail "JWT_SVID_ISSUER (the SPIRE server's jwt_issuer) is required with JWT_SVID_JWKS_URL"
  fi
  if [ -n "$issuer" ]; then set -- "$@" bound_issuer="$issuer"; fi
  "$cli" write auth/jwt/config "$@" >/dev/null
  "$cli" write auth/jwt/role/credential-broker role_type=jwt \
    bound_audiences="$audience" bound_subject="$BROKER_SPIFFE_ID" user_claim=sub \
    token_policies=credential-broker token_ttl="$token_ttl" token_max_ttl="$token_ttl" >/dev/null
fi

if [ -n "${PG_CONNECTION_URL:-}" ]; then
  identifier "$db_schema" DB_SCHEMA
  case "$db_schema" in *,*) fail "DB_SCHEMA names one schema" ;; esac
  if [ -n "$db_tables" ]; then
    identifier "$db_tables" DB_TABLES
    tables=$(printf '%s' "$db_tables" | sed "s/[^,][^,]*/\"$db_schema\".\"&\"/g; s/,/, /g")
  else
    tables="ALL TABLES IN SCHEMA \"$db_schema\""
  fi
  echo "database engine: role $db_role, TTL $db_ttl, SELECT on $tables"
  enabled secrets database || "$cli" secrets enable database >/dev/null
  "$cli" write database/config/broker-postgres \
    plugin_name=postgresql-database-plugin allowed_roles="$db_role" \
    connection_url="$PG_CONNECTION_URL" \
    username="${PG_ADMIN_USER:?PG_ADMIN_USER is required with PG_CONNECTION_URL}" \
    password="${PG_ADMIN_PASSWORD:?PG_ADMIN_PASSWORD is required with PG_CONNECTION_URL}" >/dev/null
  "$cli" write database/roles/"$db_role" db_name=broker-postgres \
    creation_statements="CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT USAGE ON SCHEMA \"$db_schema\" TO \"{{name}}\"; GRANT SELECT ON $tables TO \"{{name}}\";" \
    renew_statements="ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}';" \
    revocation_statements="REASSIGN OWNED BY \"{{name}}\" TO CURRENT_USER; DROP OWNED BY \"{{name}}\"; DROP ROLE IF EXISTS \"{{name}}\";" \
    default_ttl="$db_ttl" max_ttl="$db_ttl" >/dev/null
fi

echo "kv v2 at $kv_mount/"
enabled secrets "$kv_mount" || "$cli" secrets enable -path="$kv_mount" -version=2 kv >/dev/null
echo "done"
