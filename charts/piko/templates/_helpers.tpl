{{/*
Chart name, truncated to the 63 characters allowed in DNS labels.
*/}}
{{- define "piko.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. Truncated to 52 characters so that StatefulSet pod names
(plus the controller-revision-hash label) stay within Kubernetes limits.
*/}}
{{- define "piko.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of the headless Service (the StatefulSet's serviceName).
*/}}
{{- define "piko.headlessServiceName" -}}
{{- printf "%s-headless" (include "piko.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "piko.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "piko.labels" -}}
helm.sh/chart: {{ include "piko.chart" . }}
{{ include "piko.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "piko.selectorLabels" -}}
app.kubernetes.io/name: {{ include "piko.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "piko.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/*
cluster.join as written into server.yaml: cluster.join if set, else the SRV record of the
headless Service's port "cluster".
*/}}
{{- define "piko.clusterJoin" -}}
{{- if .Values.cluster.join }}
{{- .Values.cluster.join | toString }}
{{- else }}
{{- printf "srv:_cluster._tcp.%s.%s.svc.%s" (include "piko.headlessServiceName" .) .Release.Namespace (.Values.cluster.clusterDomain | toString | trimSuffix ".") }}
{{- end }}
{{- end }}

{{/*
"true" when the pods get a cluster secret (from cluster.existingSecret, cluster.secret or a
generated one), empty otherwise.
*/}}
{{- define "piko.clusterSecretEnabled" -}}
{{- if or .Values.cluster.existingSecret.name .Values.cluster.secret .Values.cluster.generateSecret }}true{{ end }}
{{- end }}

{{/*
"true" when the chart creates the cluster Secret itself (no cluster.existingSecret).
*/}}
{{- define "piko.createClusterSecret" -}}
{{- if and (not .Values.cluster.existingSecret.name) (or .Values.cluster.secret .Values.cluster.generateSecret) }}true{{ end }}
{{- end }}

{{/*
Name and key of the Secret holding the cluster secret.
*/}}
{{- define "piko.clusterSecretName" -}}
{{- if .Values.cluster.existingSecret.name }}
{{- .Values.cluster.existingSecret.name | toString }}
{{- else }}
{{- printf "%s-cluster" (include "piko.fullname" .) }}
{{- end }}
{{- end }}

{{- define "piko.clusterSecretKey" -}}
{{- if .Values.cluster.existingSecret.name }}
{{- .Values.cluster.existingSecret.key | toString }}
{{- else -}}
secret
{{- end }}
{{- end }}

{{/*
Base64 value of the Secret the chart creates: cluster.secret if set; else the value already
in the cluster (lookup), so that upgrades keep it; else 32 random characters (first install,
or helm template / --dry-run, where lookup returns nothing).
*/}}
{{- define "piko.clusterSecretData" -}}
{{- if .Values.cluster.secret }}
{{- .Values.cluster.secret | toString | b64enc }}
{{- else }}
{{- $previous := "" }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "piko.clusterSecretName" .) }}
{{- if $existing }}
{{- $previous = dig "data" "secret" "" $existing }}
{{- end }}
{{- if $previous }}
{{- $previous }}
{{- else }}
{{- randAlphaNum 32 | b64enc }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Content of /etc/piko/server.yaml: the chart's settings, with server.extraConfig
deep-merged over them. The cluster secret is not written here (the ConfigMap is not
secret): piko-server expands ${PIKO_CLUSTER_SECRET} from the environment.
*/}}
{{- define "piko.serverConfig" -}}
{{- $proxy := dict "bind_addr" (printf ":%d" (int .Values.ports.proxy)) "timeout" (toString .Values.server.proxyTimeout) }}
{{- $rebalance := dict "threshold" (toString .Values.upstream.rebalance.threshold) "interval" (toString .Values.upstream.rebalance.interval) }}
{{- $upstream := dict "bind_addr" (printf ":%d" (int .Values.ports.upstream)) "rebalance" $rebalance }}
{{- $admin := dict "bind_addr" (printf ":%d" (int .Values.ports.admin)) }}
{{- $cluster := dict "bind_addr" (printf ":%d" (int .Values.ports.cluster)) }}
{{- /* Without a secret the single pod runs standalone: piko-server refuses cluster.join
       without a secret, and a standalone node does not open its cluster port. */}}
{{- if include "piko.clusterSecretEnabled" . }}
{{- $_ := set $cluster "join" (include "piko.clusterJoin" .) }}
{{- $_ := set $cluster "secret" "${PIKO_CLUSTER_SECRET}" }}
{{- end }}
{{- $ports := dict "proxy" $proxy "upstream" $upstream "admin" $admin "cluster" $cluster }}
{{- range $port := list "proxy" "upstream" "admin" "cluster" }}
{{- $t := index $.Values.tls $port }}
{{- if $t.secretName }}
{{- $dir := printf "/etc/piko/tls/%s" $port }}
{{- $tls := dict "cert" (printf "%s/%s" $dir $t.certKey) "key" (printf "%s/%s" $dir $t.keyKey) }}
{{- if $t.clientCAKey }}
{{- $_ := set $tls "client_cas" (printf "%s/%s" $dir $t.clientCAKey) }}
{{- end }}
{{- if and (eq $port "cluster") $t.rootCAKey }}
{{- $_ := set $tls "root_cas" (printf "%s/%s" $dir $t.rootCAKey) }}
{{- end }}
{{- $_ := set (index $ports $port) "tls" $tls }}
{{- end }}
{{- end }}
{{- range $port := list "proxy" "upstream" "admin" }}
{{- $a := index $.Values.auth $port }}
{{- $auth := dict }}
{{- if $a.hmacSecret.name }}
{{- $_ := set $auth "hmac_secret_key" (printf "${%s}" (include "piko.hmacEnv" $port)) }}
{{- end }}
{{- if $a.rsaPublicKey }}
{{- $_ := set $auth "rsa_public_key" (toString $a.rsaPublicKey) }}
{{- end }}
{{- if $a.ecdsaPublicKey }}
{{- $_ := set $auth "ecdsa_public_key" (toString $a.ecdsaPublicKey) }}
{{- end }}
{{- if $a.jwksEndpoint }}
{{- $_ := set $auth "jwks" (dict "endpoint" (toString $a.jwksEndpoint)) }}
{{- end }}
{{- if $auth }}
{{- if $a.audience }}
{{- $_ := set $auth "audience" (toString $a.audience) }}
{{- end }}
{{- if $a.issuer }}
{{- $_ := set $auth "issuer" (toString $a.issuer) }}
{{- end }}
{{- $_ := set (index $ports $port) "auth" $auth }}
{{- end }}
{{- end }}
{{- $log := dict "level" (toString .Values.server.logLevel) }}
{{- $cfg := dict "proxy" $proxy "upstream" $upstream "admin" $admin "cluster" $cluster "log" $log "grace_period" (toString .Values.server.gracePeriod) "drain_delay" (toString .Values.server.drainDelay) }}
{{- $cfg = mustMergeOverwrite $cfg (deepCopy (.Values.server.extraConfig | default dict)) }}
{{- toYaml $cfg }}
{{- end }}

{{/*
Checks on values that would otherwise produce a broken deployment.
*/}}
{{- define "piko.validate" -}}
{{- $c := .Values.cluster }}
{{- if and $c.existingSecret.name $c.secret }}
{{- fail "cluster.existingSecret.name and cluster.secret are both set: give the cluster secret one way only." }}
{{- end }}
{{- if and $c.existingSecret.name (not $c.existingSecret.key) }}
{{- fail "cluster.existingSecret.key is empty: name the key of the Secret that holds the cluster secret." }}
{{- end }}
{{- if and $c.secret (not (regexMatch "^[!-~]+$" (toString $c.secret))) }}
{{- fail "cluster.secret: use printable ASCII without spaces (it is sent in an HTTP header)." }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not (include "piko.clusterSecretEnabled" .)) }}
{{- fail "replicaCount > 1 needs a cluster secret, or anyone who reaches the cluster port can use the tunnels: set cluster.existingSecret.name, cluster.secret, or cluster.generateSecret=true." }}
{{- end }}
{{- range $port := list "proxy" "upstream" "admin" }}
{{- $a := index $.Values.auth $port }}
{{- $n := 0 }}
{{- if $a.hmacSecret.name }}{{ $n = add1 $n }}{{ end }}
{{- if $a.rsaPublicKey }}{{ $n = add1 $n }}{{ end }}
{{- if $a.ecdsaPublicKey }}{{ $n = add1 $n }}{{ end }}
{{- if $a.jwksEndpoint }}{{ $n = add1 $n }}{{ end }}
{{- if gt $n 1 }}
{{- fail (printf "auth.%s: give one key source (hmacSecret.name, rsaPublicKey, ecdsaPublicKey or jwksEndpoint), not %d" $port $n) }}
{{- end }}
{{- if and (eq $n 0) (or $a.audience $a.issuer) }}
{{- fail (printf "auth.%s.audience/issuer need a key source (hmacSecret.name, rsaPublicKey, ecdsaPublicKey or jwksEndpoint)" $port) }}
{{- end }}
{{- if and $a.jwksEndpoint (not (hasPrefix "https://" (toString $a.jwksEndpoint))) }}
{{- fail (printf "auth.%s.jwksEndpoint: want an https:// URL (piko-server refuses http://)" $port) }}
{{- end }}
{{- end }}
{{- if and .Values.tls.cluster.secretName (not .Values.tls.cluster.rootCAKey) }}
{{- fail "tls.cluster.rootCAKey is empty: with TLS on the cluster port, name the key holding the CAs peers are verified against." }}
{{- end }}
{{- if .Values.tls.admin.clientCAKey }}
{{- fail "tls.admin.clientCAKey: the kubelet's probes cannot present a client certificate; use auth.admin to protect the admin port." }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (include "piko.adminAuth" .) (not .Values.serviceMonitor.tokenSecret.name) }}
{{- fail "serviceMonitor.tokenSecret.name is empty: auth.admin is on, so /metrics needs a token; name a Secret holding one." }}
{{- end }}
{{- $_ := include "piko.terminationGracePeriodSeconds" . }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?$" (toString .Values.upstream.rebalance.threshold)) }}
{{- fail "upstream.rebalance.threshold: want a fraction such as 0.2 (0: off)." }}
{{- end }}
{{- end }}

{{/*
Environment variable that carries <port>'s HMAC secret (auth.<port>.hmacSecret), read in
server.yaml as ${PIKO_<PORT>_HMAC_SECRET}.
*/}}
{{- define "piko.hmacEnv" -}}
{{- printf "PIKO_%s_HMAC_SECRET" (upper .) }}
{{- end }}

{{/*
Seconds in a Go duration string ("500ms", "30s", "1m30s", "1h"), as a float.
*/}}
{{- define "piko.durationSeconds" -}}
{{- $d := toString . }}
{{- if not (regexMatch "^(0|([0-9]+(\\.[0-9]+)?(h|ms|m|s|us|ns))+)$" $d) }}
{{- fail (printf "%q is not a duration (want Go syntax: 500ms, 30s, 1m30s)" $d) }}
{{- end }}
{{- $total := 0.0 }}
{{- range $part := regexFindAll "[0-9]+(\\.[0-9]+)?(h|ms|m|s|us|ns)" $d -1 }}
{{- $n := regexFind "^[0-9]+(\\.[0-9]+)?" $part | float64 }}
{{- $unit := trimPrefix (regexFind "^[0-9]+(\\.[0-9]+)?" $part) $part }}
{{- $mult := get (dict "h" 3600.0 "m" 60.0 "s" 1.0 "ms" 0.001 "us" 0.000001 "ns" 0.000000001) $unit }}
{{- $total = addf $total (mulf $n $mult) }}
{{- end }}
{{- $total }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the value if set (checked to be larger than drainDelay +
gracePeriod), else drainDelay + gracePeriod + 10, rounded up.
*/}}
{{- define "piko.terminationGracePeriodSeconds" -}}
{{- $need := addf (include "piko.durationSeconds" .Values.server.drainDelay) (include "piko.durationSeconds" .Values.server.gracePeriod) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- addf $need 10 | ceil | int }}
{{- else }}
{{- $set := .Values.terminationGracePeriodSeconds | int }}
{{- if le (float64 $set) $need }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be longer than server.drainDelay + server.gracePeriod (%s + %s = %gs), or Kubernetes kills draining pods with requests in flight; leave it null to derive it" $set (toString .Values.server.drainDelay) (toString .Values.server.gracePeriod) $need) }}
{{- end }}
{{- $set }}
{{- end }}
{{- end }}

{{/*
Whether admin requests (probes aside) go over TLS: "true" or empty.
*/}}
{{- define "piko.adminTLS" -}}
{{- if .Values.tls.admin.secretName }}true{{ end }}
{{- end }}

{{/*
A probe from values; an httpGet probe gets scheme HTTPS when the admin port serves TLS
(the kubelet does not verify the certificate).
*/}}
{{- define "piko.probe" -}}
{{- $p := deepCopy .probe }}
{{- if and $p.httpGet (include "piko.adminTLS" .root) }}
{{- $_ := set $p.httpGet "scheme" "HTTPS" }}
{{- end }}
{{- toYaml $p }}
{{- end }}

{{/*
Whether the admin port requires a token (auth.admin has a key source): "true" or empty.
*/}}
{{- define "piko.adminAuth" -}}
{{- $a := .Values.auth.admin }}
{{- if or $a.hmacSecret.name $a.rsaPublicKey $a.ecdsaPublicKey $a.jwksEndpoint }}true{{ end }}
{{- end }}
