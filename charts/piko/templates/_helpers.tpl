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
Content of /etc/piko/server.yaml: the chart's settings, with server.extraConfig
deep-merged over them.
*/}}
{{- define "piko.serverConfig" -}}
{{- $proxy := dict "bind_addr" (printf ":%d" (int .Values.ports.proxy)) "timeout" (toString .Values.server.proxyTimeout) }}
{{- $upstream := dict "bind_addr" (printf ":%d" (int .Values.ports.upstream)) }}
{{- $admin := dict "bind_addr" (printf ":%d" (int .Values.ports.admin)) }}
{{- $log := dict "level" (toString .Values.server.logLevel) }}
{{- $cfg := dict "proxy" $proxy "upstream" $upstream "admin" $admin "log" $log "grace_period" (toString .Values.server.gracePeriod) }}
{{- $cfg = mustMergeOverwrite $cfg (deepCopy (.Values.server.extraConfig | default dict)) }}
{{- toYaml $cfg }}
{{- end }}

{{/*
Checks on values that would otherwise produce a broken deployment.
*/}}
{{- define "piko.validate" -}}
{{- if gt (int .Values.replicaCount) 1 }}
{{- fail "replicaCount > 1 is not supported yet: piko-server has no clustering in this release, so each replica would only know its own upstreams. Clustering comes in a later release." }}
{{- end }}
{{- end }}
