{{/*
piko-sidecar named templates. Each takes a dict:
  Values   the sidecar's settings (e.g. .Values.piko of the calling chart; see README.md)
  Release  the caller's .Release
  Chart    optional: the caller's .Chart (unused today; kept for labels later)

  containers:
    {{- include "piko-sidecar.container" (dict "Values" .Values.piko "Release" .Release) | nindent 8 }}
  volumes:
    {{- include "piko-sidecar.volumes" (dict "Values" .Values.piko "Release" .Release) | nindent 8 }}

"piko-sidecar.container" renders one list item (a container); "piko-sidecar.volumes"
renders zero or more list items (put it under volumes:, even when it may be empty, or
guard it with "piko-sidecar.hasVolumes").
*/}}

{{/*
The caller's values over the defaults, checked. Returns YAML; use with fromYaml.
*/}}
{{- define "piko-sidecar.values" -}}
{{- $defaults := include "piko-sidecar.defaults" . | fromYaml }}
{{- $user := .Values | default dict }}
{{- range $k, $_ := $user }}
{{- if not (hasKey $defaults $k) }}
{{- fail (printf "piko-sidecar: unknown value %q (known: %s)" $k (keys $defaults | sortAlpha | join ", ")) }}
{{- end }}
{{- end }}
{{- range $k := list "image" "token" "forwardToken" "rootCA" "clientCert" }}
{{- range $sub, $_ := (index $user $k | default dict) }}
{{- if not (hasKey (index $defaults $k) $sub) }}
{{- fail (printf "piko-sidecar: unknown value %q in %s (known: %s)" $sub $k (keys (index $defaults $k) | sortAlpha | join ", ")) }}
{{- end }}
{{- end }}
{{- end }}
{{- $v := mustMergeOverwrite (deepCopy $defaults) (deepCopy $user) }}
{{- if not $v.connectUrl }}
{{- fail "piko-sidecar: connectUrl is empty: give the piko-server upstream URL, e.g. http://piko.piko.svc:8001" }}
{{- end }}
{{- if not (or $v.endpoints $v.tcpEndpoints $v.forwards) }}
{{- fail "piko-sidecar: nothing to do: set endpoints, tcpEndpoints or forwards" }}
{{- end }}
{{- range $e := concat $v.endpoints $v.tcpEndpoints }}
{{- if not (regexMatch "^[A-Za-z0-9._-]{1,128}=[^=]+" (toString $e)) }}
{{- fail (printf "piko-sidecar: endpoint %q: want NAME=ADDR (NAME: 1-128 of [A-Za-z0-9._-])" (toString $e)) }}
{{- end }}
{{- end }}
{{- range $f := $v.forwards }}
{{- if not (regexMatch "^[^=]+=[A-Za-z0-9._-]{1,128}$" (toString $f)) }}
{{- fail (printf "piko-sidecar: forward %q: want LOCAL_ADDR=ENDPOINT" (toString $f)) }}
{{- end }}
{{- end }}
{{- if and $v.rootCA.secretName $v.rootCA.configMapName }}
{{- fail "piko-sidecar: rootCA: give secretName or configMapName, not both" }}
{{- end }}
{{- $c := int $v.connections }}
{{- if or (lt $c 1) (gt $c 64) }}
{{- fail (printf "piko-sidecar: connections must be between 1 and 64 (got %v)" $v.connections) }}
{{- end }}
{{- toYaml $v }}
{{- end }}

{{/*
Where the mounted files go in the sidecar container.
*/}}
{{- define "piko-sidecar.dir" -}}/etc/piko-sidecar{{- end }}

{{- define "piko-sidecar.container" -}}
{{- include "piko-sidecar._container" . | trim }}
{{- end }}

{{- define "piko-sidecar._container" -}}
{{- $v := include "piko-sidecar.values" . | fromYaml }}
{{- $dir := include "piko-sidecar.dir" . }}
- name: {{ $v.name }}
  image: {{ printf "%s:%s" $v.image.repository (toString $v.image.tag) | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- with $v.command }}
  command:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  args:
    - {{ printf "--connect.url=%s" (toString $v.connectUrl) | quote }}
    {{- if ne (int $v.connections) 1 }}
    - {{ printf "--connect.connections=%s" (toString (int $v.connections)) | quote }}
    {{- end }}
    {{- range $v.endpoints }}
    - {{ printf "--endpoint=%s" (toString .) | quote }}
    {{- end }}
    {{- range $v.tcpEndpoints }}
    - {{ printf "--tcp-endpoint=%s" (toString .) | quote }}
    {{- end }}
    {{- range $v.forwards }}
    - {{ printf "--forward=%s" (toString .) | quote }}
    {{- end }}
    {{- if $v.forwardUrl }}
    - {{ printf "--forward.url=%s" (toString $v.forwardUrl) | quote }}
    {{- end }}
    {{- if $v.token.secretName }}
    - {{ printf "--connect.token-file=%s/token/%s" (toString $dir) (toString $v.token.key) | quote }}
    {{- end }}
    {{- if $v.forwardToken.secretName }}
    - {{ printf "--forward.token-file=%s/forward-token/%s" (toString $dir) (toString $v.forwardToken.key) | quote }}
    {{- end }}
    {{- if or $v.rootCA.secretName $v.rootCA.configMapName }}
    - {{ printf "--connect.tls.root-cas=%s/ca/%s" (toString $dir) (toString $v.rootCA.key) | quote }}
    {{- end }}
    {{- if $v.clientCert.secretName }}
    - {{ printf "--connect.tls.cert=%s/client/%s" (toString $dir) (toString $v.clientCert.certKey) | quote }}
    - {{ printf "--connect.tls.key=%s/client/%s" (toString $dir) (toString $v.clientCert.keyKey) | quote }}
    {{- end }}
    - {{ printf "--admin.bind-addr=:%d" (int $v.adminPort) | quote }}
    - {{ printf "--log.level=%s" (toString $v.logLevel) | quote }}
    - {{ printf "--grace-period=%s" (toString $v.gracePeriod) | quote }}
    {{- range $v.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  {{- with $v.env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: piko-admin
      containerPort: {{ int $v.adminPort }}
      protocol: TCP
  {{- with $v.livenessProbe }}
  livenessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.readinessProbe }}
  readinessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if include "piko-sidecar.hasVolumes" . }}
  volumeMounts:
    {{- if $v.token.secretName }}
    - name: {{ $v.name }}-token
      mountPath: {{ $dir }}/token
      readOnly: true
    {{- end }}
    {{- if $v.forwardToken.secretName }}
    - name: {{ $v.name }}-forward-token
      mountPath: {{ $dir }}/forward-token
      readOnly: true
    {{- end }}
    {{- if or $v.rootCA.secretName $v.rootCA.configMapName }}
    - name: {{ $v.name }}-ca
      mountPath: {{ $dir }}/ca
      readOnly: true
    {{- end }}
    {{- if $v.clientCert.secretName }}
    - name: {{ $v.name }}-client
      mountPath: {{ $dir }}/client
      readOnly: true
    {{- end }}
  {{- end }}
{{- end }}

{{/*
"true" when the sidecar needs volumes (a token, a CA or a client certificate), else empty.
*/}}
{{- define "piko-sidecar.hasVolumes" -}}
{{- $v := include "piko-sidecar.values" . | fromYaml }}
{{- if or $v.token.secretName $v.forwardToken.secretName $v.rootCA.secretName $v.rootCA.configMapName $v.clientCert.secretName }}true{{ end }}
{{- end }}

{{- define "piko-sidecar.volumes" -}}
{{- include "piko-sidecar._volumes" . | trim }}
{{- end }}

{{- define "piko-sidecar._volumes" -}}
{{- $v := include "piko-sidecar.values" . | fromYaml }}
{{- if $v.token.secretName }}
- name: {{ $v.name }}-token
  secret:
    secretName: {{ $v.token.secretName | quote }}
    items:
      - key: {{ $v.token.key | quote }}
        path: {{ $v.token.key | quote }}
{{- end }}
{{- if $v.forwardToken.secretName }}
- name: {{ $v.name }}-forward-token
  secret:
    secretName: {{ $v.forwardToken.secretName | quote }}
    items:
      - key: {{ $v.forwardToken.key | quote }}
        path: {{ $v.forwardToken.key | quote }}
{{- end }}
{{- if $v.rootCA.secretName }}
- name: {{ $v.name }}-ca
  secret:
    secretName: {{ $v.rootCA.secretName | quote }}
    items:
      - key: {{ $v.rootCA.key | quote }}
        path: {{ $v.rootCA.key | quote }}
{{- else if $v.rootCA.configMapName }}
- name: {{ $v.name }}-ca
  configMap:
    name: {{ $v.rootCA.configMapName | quote }}
    items:
      - key: {{ $v.rootCA.key | quote }}
        path: {{ $v.rootCA.key | quote }}
{{- end }}
{{- if $v.clientCert.secretName }}
- name: {{ $v.name }}-client
  secret:
    secretName: {{ $v.clientCert.secretName | quote }}
{{- end }}
{{- end }}
