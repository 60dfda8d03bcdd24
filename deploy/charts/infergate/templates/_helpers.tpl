{{/*
Names. The pool is named after the release (as in the reference chart). The picker's objects are
"<release>-epp" with dots replaced by dashes: a Service name must be a DNS-1035 label, and the
tutorial's release name (vllm-llama3.1-8b-instruct) contains a dot.
*/}}
{{- define "infergate.poolName" -}}
{{- .Release.Name -}}
{{- end -}}

{{- define "infergate.pickerName" -}}
{{- $base := .Release.Name | lower | replace "." "-" | replace "_" "-" | trunc 59 | trimSuffix "-" -}}
{{- printf "%s-epp" $base -}}
{{- end -}}

{{- define "infergate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Label values must be <= 63 characters and start/end alphanumeric. */}}
{{- define "infergate.selectorLabels" -}}
app.kubernetes.io/name: infergate-epp
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" | trimSuffix "." | quote }}
{{- end -}}

{{- define "infergate.labels" -}}
helm.sh/chart: {{ include "infergate.chart" . }}
{{ include "infergate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: infergate
{{- end -}}

{{- define "infergate.image" -}}
{{- $img := .Values.inferenceExtension.image -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion (toString $img.tag)) -}}
{{- end -}}

{{/*
Metrics dialect the picker scrapes, from the reference's modelServerType names; written on the
InferencePool as the annotation infergate.dev/model-server-type, which the picker reads.
*/}}
{{- define "infergate.metricsDialect" -}}
{{- $t := .Values.inferencePool.modelServerType | lower -}}
{{- if eq $t "vllm" -}}vllm
{{- else if eq $t "sglang" -}}sglang
{{- else if or (eq $t "triton-tensorrt-llm") (eq $t "trtllm-serve") (eq $t "trtllm") -}}trtllm
{{- else -}}
{{- fail (printf "inferencePool.modelServerType: %q is not one of vllm, sglang, triton-tensorrt-llm, trtllm-serve" .Values.inferencePool.modelServerType) -}}
{{- end -}}
{{- end -}}

{{/* Checks that would otherwise surface as a broken pool at runtime. */}}
{{- define "infergate.validate" -}}
{{- if not .Values.inferencePool.modelServers.matchLabels -}}
{{- fail "inferencePool.modelServers.matchLabels is required: the labels of your model-server Pods, e.g. --set inferencePool.modelServers.matchLabels.app=vllm-llama3.1-8b-instruct" -}}
{{- end -}}
{{- $provider := .Values.provider.name | lower -}}
{{- if not (has $provider (list "gke" "istio" "none")) -}}
{{- fail (printf "provider.name: %q is not one of gke, istio, none" .Values.provider.name) -}}
{{- end -}}
{{- if not (has .Values.inferenceExtension.failureMode (list "FailOpen" "FailClose")) -}}
{{- fail (printf "inferenceExtension.failureMode: %q is not one of FailOpen, FailClose" .Values.inferenceExtension.failureMode) -}}
{{- end -}}
{{- $file := .Values.inferenceExtension.pluginsConfigFile -}}
{{- if and (ne $file "default-plugins.yaml") (not (hasKey .Values.inferenceExtension.pluginsCustomConfig $file)) -}}
{{- fail (printf "inferenceExtension.pluginsConfigFile: %q is neither default-plugins.yaml nor a key of inferenceExtension.pluginsCustomConfig" $file) -}}
{{- end -}}
{{- $_ := include "infergate.metricsDialect" . -}}
{{- end -}}

{{/*
The picker's flags: the chart's own, overridden by inferenceExtension.flags, rendered sorted (a
stable Deployment) as --key=value; true/false (boolean or string) become --key / --no-key, the
form infergate's boolean options take.
*/}}
{{- define "infergate.flags" -}}
{{- $ie := .Values.inferenceExtension -}}
{{- $flags := dict
  "pool-name" (include "infergate.poolName" .)
  "pool-namespace" .Release.Namespace
  "pool-group" "inference.networking.k8s.io"
  "grpc-port" (toString $ie.extProcPort)
  "grpc-health-port" (toString $ie.healthPort)
  "metrics-port" (toString $ie.metricsPort)
  "config-file" (printf "/config/%s" $ie.pluginsConfigFile)
  "secure-serving" true
  "metrics-auth" (ternary "kubernetes" "disabled" $ie.monitoring.prometheus.auth.enabled)
-}}
{{- /* not `merge`: it would let the chart's true win over a user's false */ -}}
{{- range $k, $v := ($ie.flags | default (dict)) }}
{{- $_ := set $flags $k $v -}}
{{- end -}}
{{- range $k, $v := $flags }}
{{- $s := toString $v | lower }}
{{- if eq $s "true" }}
- {{ printf "--%s" $k | quote }}
{{- else if eq $s "false" }}
- {{ printf "--no-%s" $k | quote }}
{{- else }}
- {{ printf "--%s=%v" $k $v | quote }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* The chart's default EndpointPickerConfig: infergate's default profile (predicted-latency-scorer). */}}
{{- define "infergate.defaultPluginsConfig" -}}
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: predicted-latency-scorer
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - pluginRef: predicted-latency-scorer
        weight: 1
      - pluginRef: max-score-picker
{{- end -}}
