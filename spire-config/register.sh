#!/usr/bin/env sh
# Registration entries without the SPIRE Controller Manager, run from the operator's
# machine (not inside the SPIRE server: its official images have no shell):
#
#   TRUST_DOMAIN=example.org sh spire-config/register.sh
#
# It feeds entries.json (example.org replaced by TRUST_DOMAIN) on standard input to
#   kubectl exec -i ... -- /opt/spire/bin/spire-server entry create -data -
# so that nothing but the spire-server binary runs in the container. Equivalent by hand:
#   kubectl exec -i -n spire spire-server-0 -c spire-server -- \
#     /opt/spire/bin/spire-server entry create -data - < spire-config/entries.json
#
# Running it again is harmless: entries that already exist are reported and skipped.
#
#   SPIRE_NAMESPACE   namespace of the SPIRE server (default: spire)
#   SPIRE_POD         the server pod (default: spire-server-0)
#   SPIRE_CONTAINER   its container (default: spire-server)
#   SPIRE_SERVER      the binary in the image (default: /opt/spire/bin/spire-server)
#   SPIRE_SOCKET      the server API socket, when not the binary's default (-socketPath)
#   TRUST_DOMAIN      default: example.org
#   ENTRIES           the entries file (default: entries.json beside this script)
#   KUBECTL           default: kubectl
set -eu

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
td="${TRUST_DOMAIN:-example.org}"
case "$td" in
  '' | *[!a-z0-9._-]*) echo "register.sh: invalid TRUST_DOMAIN: $td" >&2; exit 2 ;;
esac
kubectl="${KUBECTL:-kubectl}"
entries="${ENTRIES:-$here/entries.json}"
[ -r "$entries" ] || { echo "register.sh: cannot read $entries" >&2; exit 2; }

set -- entry create
if [ -n "${SPIRE_SOCKET:-}" ]; then
  set -- "$@" -socketPath "$SPIRE_SOCKET"
fi
set -- "$@" -data -

status=0
out=$(sed "s/example\.org/$td/g" "$entries" | "$kubectl" exec -i \
  -n "${SPIRE_NAMESPACE:-spire}" "${SPIRE_POD:-spire-server-0}" -c "${SPIRE_CONTAINER:-spire-server}" \
  -- "${SPIRE_SERVER:-/opt/spire/bin/spire-server}" "$@" 2>&1) || status=$?
printf '%s\n' "$out"
if [ "$status" -ne 0 ]; then
  failed=$(printf '%s\n' "$out" | grep -o 'Failed to create' | wc -l)
  existing=$(printf '%s\n' "$out" | grep -o 'code: AlreadyExists' | wc -l)
  if [ "$failed" -gt 0 ] && [ "$failed" -eq "$existing" ]; then
    echo "register.sh: the other entries already exist"
    exit 0
  fi
  exit "$status"
fi
