{{/* The chart's name, or nameOverride. */}}
{{- define "mp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: fullnameOverride, else the release name when it contains the chart's
name, else release-chart (Helm's convention). */}}
{{- define "mp.fullname" -}}
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

{{/* The webhook's namespace: its own (Pod Security "restricted"), apart from the agent's. */}}
{{- define "mp.webhookNamespace" -}}
{{- default .Release.Namespace .Values.webhook.namespace }}
{{- end }}

{{- define "mp.webhookFullname" -}}
{{- printf "%s-webhook" (include "mp.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "mp.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: {{ include "mp.name" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels: the same as the kustomize tree's, so the two never select differently. */}}
{{- define "mp.agentSelectorLabels" -}}
app.kubernetes.io/name: {{ include "mp.name" . }}
app.kubernetes.io/component: agent
{{- end }}

{{- define "mp.webhookSelectorLabels" -}}
app.kubernetes.io/name: {{ include "mp.name" . }}-webhook
app.kubernetes.io/component: webhook
{{- end }}

{{- define "mp.agentLabels" -}}
{{ include "mp.agentSelectorLabels" . }}
{{ include "mp.commonLabels" . }}
{{- end }}

{{- define "mp.webhookLabels" -}}
{{ include "mp.webhookSelectorLabels" . }}
{{ include "mp.commonLabels" . }}
{{- end }}

{{- define "mp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mp.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mp.webhookServiceAccountName" -}}
{{- if .Values.webhook.serviceAccount.create }}
{{- default (include "mp.webhookFullname" .) .Values.webhook.serviceAccount.name }}
{{- else }}
{{- required "webhook.serviceAccount.name is required when webhook.serviceAccount.create is false" .Values.webhook.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when image.digest is set (a digest pins every node). */}}
{{- define "mp.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The port of config.listenAddress (host:port), which the container port must equal. */}}
{{- define "mp.metricsPort" -}}
{{- splitList ":" .Values.config.listenAddress | last }}
{{- end }}

{{/* The webhook Service's DNS names, which the serving certificate must carry. */}}
{{- define "mp.webhookDNSNames" -}}
{{- $svc := include "mp.webhookFullname" . }}
{{- $ns := include "mp.webhookNamespace" . }}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson }}
{{- end }}
