#!/usr/bin/env sh
# The same registration entries without the SPIRE Controller Manager:
#   kubectl exec -n spire spire-server-0 -- sh -s < spire-config/register.sh
# Parent: the agents-cluster node alias (k8s_psat). Adjust TRUST_DOMAIN and namespaces.
set -eu
td="${TRUST_DOMAIN:-example.org}"
server="${SPIRE_SERVER:-/opt/spire/bin/spire-server}"
node="spiffe://${td}/spire/agent/k8s_psat/agents-cluster"

"$server" entry create -node -spiffeID "$node" \
  -selector k8s_psat:cluster:agents-cluster

# The broker: a DNS name, so its X.509-SVID has a CN (Vault cert auth needs one).
"$server" entry create -parentID "$node" \
  -spiffeID "spiffe://${td}/ns/credential-broker/sa/credential-broker" \
  -selector k8s:ns:credential-broker -selector k8s:sa:credential-broker \
  -dns credential-broker.credential-broker.svc

# The demo agents of the README's story.
for agent in claims analytics; do
  "$server" entry create -parentID "$node" \
    -spiffeID "spiffe://${td}/ns/agents/sa/${agent}-agent" \
    -selector k8s:ns:agents -selector "k8s:sa:${agent}-agent"
done

# An administrator's workload (may revoke agents).
"$server" entry create -parentID "$node" \
  -spiffeID "spiffe://${td}/ns/credential-broker-admin/sa/broker-admin" \
  -selector k8s:ns:credential-broker-admin -selector k8s:sa:broker-admin
