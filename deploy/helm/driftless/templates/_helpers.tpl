{{/* The chart name, possibly overridden. */}}
{{- define "driftless.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the release's resources. */}}
{{- define "driftless.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "driftless.selectorLabels" -}}
app.kubernetes.io/name: {{ include "driftless.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "driftless.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "driftless.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "driftless.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "driftless.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the token: the user's, or the one this chart generates. */}}
{{- define "driftless.secretName" -}}
{{- default (printf "%s-token" (include "driftless.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* The token file inside the mounted Secret directory; the config references it. */}}
{{- define "driftless.tokenPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.auth.mountPath) .Values.auth.existingSecretKey }}
{{- end }}

{{- define "driftless.configPath" -}}/etc/driftless/config.toml{{- end }}
{{- define "driftless.stateDir" -}}/var/lib/driftless{{- end }}

{{/* OpenClaw's token Secret (front mode with the sidecar): the user's, or the one this chart generates. */}}
{{- define "driftless.openclawSecretName" -}}
{{- default (printf "%s-openclaw-token" (include "driftless.fullname" .)) .Values.openclaw.auth.existingSecret }}
{{- end }}

{{/* OpenClaw's token file in driftless's mount of that Secret; `upstream.token` references it. */}}
{{- define "driftless.openclawTokenPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.openclaw.auth.mountPath) .Values.openclaw.auth.existingSecretKey }}
{{- end }}

{{/*
A token Secret generated once and kept: on upgrade `lookup` finds it and its value is reused.
Takes a dict: root (the chart's context), name, key, length.
*/}}
{{- define "driftless.keptTokenSecret" -}}
{{- $existing := (lookup "v1" "Secret" .root.Release.Namespace .name) }}
{{- $token := "" }}
{{- if and $existing $existing.data (index $existing.data .key) }}
{{- $token = index $existing.data .key }}
{{- else }}
{{- $token = randAlphaNum (int .length) | b64enc }}
{{- end }}
apiVersion: v1
kind: Secret
metadata:
  name: {{ .name }}
  labels:
    {{- include "driftless.labels" .root | nindent 4 }}
  annotations:
    # Kept on `helm uninstall`, so a reinstall finds and reuses it: paired clients keep working.
    helm.sh/resource-policy: keep
type: Opaque
data:
  {{ .key }}: {{ $token | quote }}
{{- end }}
