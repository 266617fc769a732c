{{- define "broker.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "broker.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "broker.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "broker.serviceAccountName" -}}
{{- default (include "broker.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "broker.spiffeId" -}}
{{- default (printf "spiffe://%s/ns/%s/sa/%s" .Values.trustDomain .Release.Namespace (include "broker.serviceAccountName" .)) .Values.spiffeId -}}
{{- end -}}

{{/* The container image: repository@digest when a digest is set, else repository:tag. */}}
{{- define "broker.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Worker processes (`broker serve --workers N`). "auto": the container's CPU request rounded
up to whole CPUs ("500m" -> 1, "1.5" -> 2, "2" -> 2), at least 1.
*/}}
{{- define "broker.workers" -}}
{{- if eq (toString .Values.workers) "auto" -}}
{{- $cpu := toString (dig "requests" "cpu" "" (.Values.resources | default dict)) -}}
{{- $n := 1 -}}
{{- if hasSuffix "m" $cpu -}}
{{- $n = div (add (trimSuffix "m" $cpu | atoi) 999) 1000 -}}
{{- else if $cpu -}}
{{- $n = ceil (float64 $cpu) | int -}}
{{- end -}}
{{- max 1 $n -}}
{{- else -}}
{{- int .Values.workers -}}
{{- end -}}
{{- end -}}

{{/* Long enough for the preStop sleep, the broker's drain delay and shutdown timeout. */}}
{{- define "broker.terminationGracePeriodSeconds" -}}
{{- $t := .Values.termination -}}
{{- add (int $t.preStopSleepSeconds) (int $t.drainDelaySeconds) (int $t.shutdownTimeoutSeconds) (int $t.extraGraceSeconds) -}}
{{- end -}}

{{- define "broker.config" -}}
trust_domain: {{ .Values.trustDomain }}
spiffe_id: {{ include "broker.spiffeId" . }}
log_level: {{ .Values.logLevel }}
listen:
  host: 0.0.0.0
  port: 8443
  drain_delay_seconds: {{ int .Values.termination.drainDelaySeconds }}
  shutdown_timeout_seconds: {{ int .Values.termination.shutdownTimeoutSeconds }}
{{- if .Values.metrics.enabled }}
metrics:
  host: 0.0.0.0
  port: {{ int .Values.metrics.port }}
{{- end }}
identity:
  source: workload_api
  workload_api:
    socket: unix:///spiffe-workload-api/{{ .Values.spiffe.socketFile }}
    timeout_seconds: 30
  {{- with .Values.federation }}
  federation:
    {{- range . }}
    - trust_domain: {{ . }}
    {{- end }}
  {{- end }}
authentication:
  jwt_svid:
    audience: {{ default (include "broker.spiffeId" .) .Values.authentication.jwtSvidAudience }}
    leeway_seconds: {{ int .Values.authentication.leewaySeconds }}
  trusted_proxies: {{ .Values.authentication.trustedProxies | toJson }}
admins: {{ .Values.admins | toJson }}
resource_servers: {{ .Values.resourceServers | toJson }}
policy:
  file: /etc/credential-broker/policy/policy.yaml
{{- with .Values.userTokenIssuers }}
user_token_issuers:
  {{- range . }}
  - issuer: {{ .issuer }}
    audience: {{ .audience }}
    jwks_url: {{ .jwksUrl }}
  {{- end }}
{{- end }}
jwt_issuer:
  issuer: {{ .Values.issuer.url }}
  algorithm: {{ .Values.issuer.algorithm }}
  keys_file: /etc/credential-broker/issuer/keys.json
  auto_rotate: false
{{- with .Values.tools }}
tools:
  {{- toYaml . | nindent 2 }}
{{- end }}
state:
  backend: {{ .Values.state.backend }}
  {{- if eq .Values.state.backend "redis" }}
  url: {{ .Values.state.redis.url }}
  {{- if .Values.state.redis.passwordSecret }}
  password_file: /etc/credential-broker/redis/password
  {{- end }}
  {{- else }}
  path: /var/lib/credential-broker/state.db
  {{- end }}
  agent_revocation_seconds: {{ int .Values.state.agentRevocationSeconds }}
audit:
  sink: {{ .Values.audit.sink }}
  {{- if eq .Values.audit.sink "file" }}
  path: /var/lib/credential-broker/audit/audit.log
  {{- end }}
  hmac_key_file: /etc/credential-broker/audit/hmac.key
  checkpoint_key_file: /etc/credential-broker/audit/checkpoint.key
  checkpoint_every: {{ int .Values.audit.checkpointEvery }}
{{- if .Values.vault.enabled }}
vault:
  address: {{ .Values.vault.address }}
  {{- if .Values.vault.caConfigMap }}
  ca_file: /etc/credential-broker/vault/ca.crt
  {{- end }}
  auth:
    method: {{ .Values.vault.auth.method }}
    mount: {{ .Values.vault.auth.mount }}
    role: {{ .Values.vault.auth.role }}
    audience: {{ .Values.vault.auth.audience }}
  timeout_seconds: {{ .Values.vault.timeoutSeconds }}
{{- end }}
{{- end -}}
