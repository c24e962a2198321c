{{/* The chart's name. */}}
{{- define "damselfly.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every resource name: release-chart, 63 characters at most. */}}
{{- define "damselfly.fullname" -}}
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

{{/* Labels of every object. */}}
{{- define "damselfly.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "damselfly.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component (pass a dict: ctx, component). */}}
{{- define "damselfly.selectorLabels" -}}
app.kubernetes.io/name: {{ include "damselfly.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The image reference. */}}
{{- define "damselfly.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* The Secret holding the tokens. */}}
{{- define "damselfly.secretName" -}}
{{- default (printf "%s-tokens" (include "damselfly.fullname" .)) .Values.tokens.existingSecret }}
{{- end }}

{{/* The supernodes' headless Service (stable per-pod names). */}}
{{- define "damselfly.supernodeHeadless" -}}
{{ include "damselfly.fullname" . }}-supernode-headless
{{- end }}

{{/* Every supernode replica by its stable name, host:port. */}}
{{- define "damselfly.supernodeAddrs" -}}
{{- $full := include "damselfly.fullname" . -}}
{{- $svc := include "damselfly.supernodeHeadless" . -}}
{{- range $i := until (int .Values.supernode.replicaCount) }}
- {{ printf "%s-supernode-%d.%s.%s.svc:%d" $full $i $svc $.Release.Namespace (int $.Values.supernode.port) | quote }}
{{- end }}
{{- end }}
