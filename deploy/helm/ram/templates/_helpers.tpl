{{/* Names and labels shared by the templates. */}}

{{- define "ram.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's objects are named after it: `ram` when the release is called ram. */}}
{{- define "ram.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ram.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ram.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ram.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "ram.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "ram.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The policy the ConfigMap holds: values.policy, and the [metrics] section when enabled. */}}
{{- define "ram.policy" -}}
{{- if .Values.metrics.enabled -}}
{{ .Values.policy | trimSuffix "\n" }}

# Added by the chart (metrics.enabled): ram serves Prometheus metrics here.
[metrics]
listen = {{ .Values.metrics.listen | quote }}
{{ else -}}
{{ .Values.policy }}
{{- end -}}
{{- end -}}

{{/* The metrics port, when ram listens on a TCP address (HOST:PORT, [V6]:PORT), not on a Unix
socket (unix:/PATH). */}}
{{- define "ram.metricsPort" -}}
{{- if and .Values.metrics.enabled (contains ":" .Values.metrics.listen) (not (hasPrefix "unix:" .Values.metrics.listen)) -}}
{{- splitList ":" .Values.metrics.listen | last -}}
{{- end -}}
{{- end -}}

{{/*
The capabilities ram needs, and no others (docs/kubernetes.md, "Capabilities", says what each
is for and how it was measured). The pod runs as root, not privileged, with every other
capability dropped. CAP_BPF and CAP_PERFMON are not among them: every check they pass,
CAP_SYS_ADMIN passes too, and ram needs CAP_SYS_ADMIN anyway.
*/}}
{{- define "ram.capabilities" -}}
- SYS_ADMIN
- NET_ADMIN
- SYS_PTRACE
- SYS_RESOURCE
{{- if .Values.imageAccess.pullGate }}
- NET_BIND_SERVICE
{{- end }}
{{- end -}}

{{- define "ram.uninstallSelectorLabels" -}}
app.kubernetes.io/name: {{ include "ram.name" . }}-uninstall
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: uninstall
{{- end -}}
