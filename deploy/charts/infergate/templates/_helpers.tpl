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
{{- $repo := $img.repository -}}
{{- if $img.registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" $img.registry) $repo }}{{ end -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion (toString $img.tag)) -}}
{{- end -}}

{{/* The metrics-reader token Secret: the reference's monitoring.prometheus.auth.secretName wins. */}}
{{- define "infergate.metricsSecret" -}}
{{- $mon := .Values.inferenceExtension.monitoring -}}
{{- default $mon.secret.name $mon.prometheus.auth.secretName -}}
{{- end -}}

{{/* Istio DestinationRule settings: the reference's provider.istio.destinationRule, else istio.destinationRule. */}}
{{- define "infergate.destinationRule" -}}
{{- $ref := dig "istio" "destinationRule" (dict) .Values.provider -}}
{{- $own := .Values.istio.destinationRule -}}
{{- toYaml (dict "host" (default $own.host $ref.host) "trafficPolicy" (default $own.trafficPolicy $ref.trafficPolicy)) -}}
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
{{- fail (printf "%s: %q is not one of vllm, sglang, triton-tensorrt-llm, trtllm-serve" (include "infergate.key" (list . "inferencePool.modelServerType")) .Values.inferencePool.modelServerType) -}}
{{- end -}}
{{- end -}}

{{/* Checks that would otherwise surface as a broken pool at runtime. */}}
{{- define "infergate.validate" -}}
{{- if not .Values.inferencePool.modelServers.matchLabels -}}
{{- $key := include "infergate.key" (list . "inferencePool.modelServers.matchLabels") -}}
{{- fail (printf "%s is required: the labels of your model-server Pods, e.g. --set %s.app=vllm-llama3.1-8b-instruct" $key $key) -}}
{{- end -}}
{{- $provider := .Values.provider.name | lower -}}
{{- if not (has $provider (list "gke" "istio" "none")) -}}
{{- fail (printf "provider.name: %q is not one of gke, istio, none" .Values.provider.name) -}}
{{- end -}}
{{- if not (has .Values.inferenceExtension.failureMode (list "FailOpen" "FailClose")) -}}
{{- fail (printf "%s: %q is not one of FailOpen, FailClose" (include "infergate.key" (list . "inferenceExtension.failureMode")) .Values.inferenceExtension.failureMode) -}}
{{- end -}}
{{- $file := .Values.inferenceExtension.pluginsConfigFile -}}
{{- if and (ne $file "default-plugins.yaml") (not (hasKey .Values.inferenceExtension.pluginsCustomConfig $file)) -}}
{{- fail (printf "%s: %q is neither default-plugins.yaml nor a key of %s" (include "infergate.key" (list . "inferenceExtension.pluginsConfigFile")) $file (include "infergate.key" (list . "inferenceExtension.pluginsCustomConfig"))) -}}
{{- end -}}
{{- $_ := include "infergate.metricsDialect" . -}}
{{- $ie := .Values.inferenceExtension -}}
{{- $pool := .Values.inferencePool -}}
{{- if ne ($pool.modelServerProtocol | default "http") "http" -}}
{{- fail (printf "%s: %q is not supported: infergate speaks HTTP to model servers (no vLLM gRPC)" (include "infergate.key" (list . "inferencePool.modelServerProtocol")) $pool.modelServerProtocol) -}}
{{- end -}}
{{- if not (has ($pool.parser | default "") (list "" "openai-parser" "anthropic-parser")) -}}
{{- fail (printf "inferencePool.parser: %q is not supported here: infergate parses OpenAI and Anthropic Messages requests (openai-parser, anthropic-parser, always both); a passthrough-parser needs its paths listed, so declare it in inferenceExtension.pluginsCustomConfig" $pool.parser) -}}
{{- end -}}
{{- range $key, $why := dict "sidecar" "no sidecar container is needed (the picker serves ext_proc itself)" "latencyPredictor" "the latency-predictor sidecar is not supported" -}}
{{- if (get $ie $key | default (dict)).enabled -}}
{{- fail (printf "%s.enabled: not supported: %s" (include "infergate.key" (list $ (printf "inferenceExtension.%s" $key))) $why) -}}
{{- end -}}
{{- end -}}
{{- $tracing := $ie.tracing | default (dict) -}}
{{- if and $tracing.enabled (not $tracing.otelExporterEndpoint) -}}
{{- fail (printf "%s: required with tracing.enabled (the OTLP/gRPC collector, e.g. http://otel-collector.observability:4317)" (include "infergate.key" (list . "inferenceExtension.tracing.otelExporterEndpoint"))) -}}
{{- end -}}
{{- if and (include "infergate.metricsDataSource" .) (ne $ie.pluginsConfigFile "default-plugins.yaml") -}}
{{- fail (printf "%s: applies to the chart's default-plugins.yaml only; %s is yours: put a metrics-data-source with these parameters in it" (include "infergate.key" (list . "inferenceExtension.metricsDataSource")) $ie.pluginsConfigFile) -}}
{{- end -}}
{{- end -}}

{{/*
The flags of the picker's command, `infergate epp` (ext_proc for a Gateway) or, in the standalone
layout (.Values._standalone, llm-d-router-standalone's values), `infergate serve` (the picker and
its built-in proxy): the chart's own, overridden by inferenceExtension.flags (router.epp.flags),
rendered sorted (a stable Deployment). Every key must be a flag of that command or a reference
flag with a mapping; anything else fails here, at template time, rather than crash-looping the pod:
- valued flags render --key=value; toggles (secure-serving, flow-control) --key / --no-key;
  switches (disable-endpoint-subset-filter, debug-headers) --key when true, nothing when false;
- reference flags: v (klog verbosity; >= 4 → --log-level=debug, else info), zap-log-level,
  zap-encoder (json, console → --log-format json, text), allow-experimental-plugins (nothing to
  unlock: accepted, rendered as nothing), health-checking (the ext_proc port always answers
  grpc.health.v1: accepted, rendered as nothing),
  metrics-endpoint-auth (→ --metrics-auth), drain-timeout (seconds → --grace), tracing (only
  as inferenceExtension.tracing.enabled says: the picker traces when that names a collector, see
  infergate.tracingEnv), and enable-pprof / ha-enable-leader-election only when false (infergate
  has neither).
In the standalone layout the selector, its ports, the proxy and admin ports and the config file
come from values (refused as flags, naming the value to set), and the flags only `infergate epp`
has (ext_proc, TLS, gRPC) are refused as such.

infergate.flagKinds: {valued, toggles, switches} of the command; infergate.flagMap: the flags as a
JSON object (key → string; read by the RBAC template too); infergate.flags: the args.
*/}}
{{- define "infergate.eppFlagKinds" -}}
{{- toJson (dict
  "valued" (list "pool-name" "pool-namespace" "pool-group" "kubeconfig" "host" "grpc-port" "grpc-health-port" "metrics-port" "config-file" "config-text" "cert-path" "metrics-auth" "metrics-token-file" "refresh-metrics-interval" "refresh-prometheus-metrics-interval" "metrics-staleness-threshold" "grace" "workers" "log-level" "log-format" "settings" "tls-min-version" "tls-cipher-suites" "grpc-max-recv-msg-size" "grpc-max-send-msg-size" "metrics-cert-dir" "metrics-client-ca-file")
  "toggles" (list "secure-serving" "flow-control")
  "switches" (list "disable-endpoint-subset-filter" "enable-cert-reload" "emit-endpoint-scores" "enable-grpc-stream-metrics")
) -}}
{{- end -}}

{{- define "infergate.flagKinds" -}}
{{- if .Values._standalone -}}
{{- toJson (dict
  "valued" (list "pool-namespace" "kubeconfig" "host" "metrics-auth" "metrics-token-file" "api-keys" "max-messages" "max-tokens-ceiling" "grace" "workers" "log-level" "log-format" "settings" "data-plane")
  "toggles" (list "flow-control")
  "switches" (list "debug-headers")
) -}}
{{- else -}}
{{- include "infergate.eppFlagKinds" . -}}
{{- end -}}
{{- end -}}

{{/* The standalone layout's --endpoint-selector: router.modelServers.matchLabels as k=v, sorted. */}}
{{- define "infergate.endpointSelector" -}}
{{- $labels := .Values.inferencePool.modelServers.matchLabels | default (dict) -}}
{{- $pairs := list -}}
{{- range $k := keys $labels | sortAlpha -}}
{{- $pairs = append $pairs (printf "%s=%v" $k (get $labels $k)) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{- define "infergate.flagMap" -}}
{{- $ie := .Values.inferenceExtension -}}
{{- $serve := .Values._standalone | default false -}}
{{- $kinds := include "infergate.flagKinds" . | fromJson -}}
{{- $valued := $kinds.valued -}}
{{- $toggles := $kinds.toggles -}}
{{- $switches := $kinds.switches -}}
{{- $eppKinds := include "infergate.eppFlagKinds" . | fromJson -}}
{{- $eppOnly := concat $eppKinds.valued $eppKinds.toggles $eppKinds.switches -}}
{{- $offOnly := list "enable-pprof" "ha-enable-leader-election" -}}
{{- $auth := ternary "kubernetes" "disabled" $ie.monitoring.prometheus.auth.enabled -}}
{{- $flags := dict -}}
{{- /* serve: flags the chart sets from values, and the value that sets each */ -}}
{{- $owned := dict -}}
{{- if $serve -}}
{{- $ports := list -}}
{{- range .Values.inferencePool.targetPorts }}{{ $ports = append $ports (toString (.number | int)) }}{{ end -}}
{{- $flags = dict
  "endpoint-selector" (include "infergate.endpointSelector" .)
  "endpoint-target-ports" (join "," $ports)
  "pool-namespace" .Release.Namespace
  "port" (toString .Values._proxyPort)
  "admin-port" (toString $ie.metricsPort)
  "host" "0.0.0.0"
  "config" (printf "/config/%s" $ie.pluginsConfigFile)
  "metrics-auth" $auth
-}}
{{- $owned = dict
  "endpoint-selector" "router.modelServers.matchLabels"
  "endpoint-target-ports" "router.modelServers.targetPorts"
  "port" "router.extraServicePorts (the port named http)"
  "admin-port" "router.metricsPort"
  "metrics-port" "router.metricsPort"
  "config" "router.epp.pluginsConfigFile"
  "config-file" "router.epp.pluginsConfigFile"
-}}
{{- else -}}
{{- $flags = dict
  "pool-name" (include "infergate.poolName" .)
  "pool-namespace" .Release.Namespace
  "pool-group" "inference.networking.k8s.io"
  "grpc-port" (toString $ie.extProcPort)
  "grpc-health-port" (toString $ie.healthPort)
  "metrics-port" (toString $ie.metricsPort)
  "config-file" (printf "/config/%s" $ie.pluginsConfigFile)
  "secure-serving" "true"
  "metrics-auth" $auth
-}}
{{- end -}}
{{- /* not `merge`: it would let the chart's true win over a user's false */ -}}
{{- range $k, $v := ($ie.flags | default (dict)) }}
{{- $s := toString $v | lower }}
{{- $where := include "infergate.key" (list $ (printf "inferenceExtension.flags.%s" $k)) }}
{{- if eq $k "v" }}
{{- if not (regexMatch "^[0-9]+$" (toString $v)) }}{{ fail (printf "%s: %q is not a verbosity level (0, 1, 2, ...)" $where (toString $v)) }}{{ end }}
{{- $_ := set $flags "log-level" (ternary "debug" "info" (ge (int $v) 4)) }}
{{- else if eq $k "zap-log-level" }}
{{- $level := dict "debug" "debug" "info" "info" "warn" "warning" "warning" "warning" "error" "error" }}
{{- if not (hasKey $level $s) }}{{ fail (printf "%s: %q is not one of debug, info, warn, error" $where (toString $v)) }}{{ end }}
{{- $_ := set $flags "log-level" (get $level $s) }}
{{- else if eq $k "zap-encoder" }}
{{- $format := dict "json" "json" "console" "text" }}
{{- if not (hasKey $format $s) }}{{ fail (printf "%s: %q is not one of json, console" $where (toString $v)) }}{{ end }}
{{- $_ := set $flags "log-format" (get $format $s) }}
{{- else if has $k (list "allow-experimental-plugins" "health-checking") }}
{{- if not (has $s (list "true" "false")) }}{{ fail (printf "%s: must be true or false" $where) }}{{ end }}
{{- else if eq $k "metrics-endpoint-auth" }}
{{- if not (has $s (list "true" "false")) }}{{ fail (printf "%s: must be true or false" $where) }}{{ end }}
{{- $_ := set $flags "metrics-auth" (ternary "kubernetes" "disabled" (eq $s "true")) }}
{{- else if eq $k "drain-timeout" }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?s?$" (toString $v)) }}{{ fail (printf "%s: %q must be seconds, e.g. 30s" $where (toString $v)) }}{{ end }}
{{- $_ := set $flags "grace" (trimSuffix "s" (toString $v)) }}
{{- else if eq $k "tracing" }}
{{- if not (has $s (list "true" "false")) }}{{ fail (printf "%s: must be true or false" $where) }}{{ end }}
{{- $on := ($ie.tracing | default (dict)).enabled | default false }}
{{- if ne (eq $s "true") $on }}{{ fail (printf "%s: %s while %s is %v; the picker traces exactly when tracing.enabled gives it a collector (otelExporterEndpoint): set that one" $where $s (include "infergate.key" (list $ "inferenceExtension.tracing.enabled")) $on) }}{{ end }}
{{- else if eq $k "print-settings" }}
{{- fail (printf "%s: prints the settings and exits, so the picker would never serve" $where) }}
{{- else if and $serve (hasKey $owned $k) }}
{{- fail (printf "%s: set by the chart in the standalone layout, from %s: set that value instead" $where (get $owned $k)) }}
{{- else if has $k (list "endpoint-selector" "endpoint-target-ports") }}
{{- fail (printf "%s: standalone mode (pods by label, no InferencePool) is this chart's standalone layout, in llm-d-router's values: router.proxy.enabled: true with router.modelServers.matchLabels (infergate serve); with the chart's own keys the picker reads the InferencePool the chart creates" $where) }}
{{- else if and $serve (has $k (list "filename" "pool-name" "pool" "pool-group")) }}
{{- fail (printf "%s: not supported in the standalone layout, which selects the Pods by label (router.modelServers.matchLabels): no InferencePool, no manifest files" $where) }}
{{- else if and $serve (eq $k "data-plane") }}
{{- if ne $s "builtin" }}{{ fail (printf "%s: %q is not supported: in a cluster infergate serve runs its built-in proxy (builtin); for Envoy or a Gateway in front, drop router.proxy and keep the InferencePool (infergate epp)" $where (toString $v)) }}{{ end }}
{{- $_ := set $flags $k $s }}
{{- else if has $k $offOnly }}
{{- if ne $s "false" }}{{ fail (printf "%s: infergate epp has no %s (only false is accepted; see docs/kubernetes.md)" $where $k) }}{{ end }}
{{- else if has $k (concat $valued $toggles $switches) }}
{{- if and (has $k (concat $toggles $switches)) (not (has $s (list "true" "false"))) }}{{ fail (printf "%s: must be true or false" $where) }}{{ end }}
{{- $_ := set $flags $k (toString $v) }}
{{- else if and $serve (has $k $eppOnly) }}
{{- fail (printf "%s: a flag of infergate epp, not of infergate serve, which the standalone layout runs: its proxy calls the picker in-process (no ext_proc gRPC, no TLS for it)" $where) }}
{{- else }}
{{- fail (printf "%s: not a flag of infergate %s and not a reference flag it maps (see docs/kubernetes.md, migration table)" $where (ternary "serve" "epp" $serve)) }}
{{- end }}
{{- end }}
{{- $where := include "infergate.key" (list $ "inferenceExtension.flags") }}
{{- if and (hasKey $flags "metrics-client-ca-file") (not (hasKey $flags "metrics-cert-dir")) }}
{{- fail (printf "%s.metrics-client-ca-file needs %s.metrics-cert-dir (the server's certificate)" $where $where) }}
{{- end }}
{{- if and (hasKey $flags "metrics-cert-dir") (not (hasKey $flags "metrics-client-ca-file")) (eq (toString (get $flags "metrics-auth")) "disabled") }}
{{- fail (printf "%s.metrics-cert-dir enables TLS on /metrics without authentication; set %s.metrics-client-ca-file or turn metrics auth on" $where $where) }}
{{- end }}
{{- toJson $flags -}}
{{- end -}}

{{- define "infergate.flags" -}}
{{- $flags := include "infergate.flagMap" . | fromJson -}}
{{- $kinds := include "infergate.flagKinds" . | fromJson -}}
{{- range $k, $v := $flags }}
{{- $s := toString $v | lower }}
{{- if has $k $kinds.toggles }}
- {{ printf "--%s%s" (ternary "" "no-" (eq $s "true")) $k | quote }}
{{- else if has $k $kinds.switches }}
{{- if eq $s "true" }}
- {{ printf "--%s" $k | quote }}
{{- end }}
{{- else }}
- {{ printf "--%s=%v" $k $v | quote }}
{{- end }}
{{- end -}}
{{- end -}}

{{/*
inferenceExtension.metricsDataSource as the metrics-data-source plugin's parameters, or nothing
when every value is the default (http, /metrics, insecureSkipVerify true).
*/}}
{{- define "infergate.metricsDataSource" -}}
{{- $m := .Values.inferenceExtension.metricsDataSource | default (dict) -}}
{{- $scheme := $m.scheme | default "http" -}}
{{- $path := $m.path | default "/metrics" -}}
{{- $skip := ternary true $m.insecureSkipVerify (not (hasKey $m "insecureSkipVerify")) -}}
{{- if or (ne $scheme "http") (ne $path "/metrics") (not $skip) -}}
scheme: {{ $scheme | quote }}
path: {{ $path | quote }}
insecureSkipVerify: {{ $skip }}
{{- end -}}
{{- end -}}

{{/* The chart's default EndpointPickerConfig: infergate's default profile (predicted-latency-scorer). */}}
{{- define "infergate.defaultPluginsConfig" -}}
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: predicted-latency-scorer
  - type: least-in-flight-scorer
  - type: max-score-picker
  {{- with include "infergate.metricsDataSource" . }}
  - type: metrics-data-source
    parameters:
      {{- . | nindent 6 }}
  {{- end }}
  {{- if and .Values._standalone (ne (lower .Values.inferencePool.modelServerType) "vllm") }}
  {{- /* standalone: no InferencePool to carry the engine annotation; the extractor's default does */}}
  - type: core-metrics-extractor
    parameters:
      defaultEngine: {{ lower .Values.inferencePool.modelServerType }}
  {{- end }}
schedulingProfiles:
  - name: default
    plugins:
      - pluginRef: predicted-latency-scorer
        weight: 1
      - pluginRef: least-in-flight-scorer
        weight: 0.1
      - pluginRef: max-score-picker
{{- end -}}

{{/*
The OpenTelemetry variables of the picker's container when inferenceExtension.tracing.enabled:
the collector, the sampler, and resource attributes naming the pod (the picker reads them at
start; docs/observability.md). The reference chart sets the same variables.
*/}}
{{- define "infergate.tracingEnv" -}}
{{- $tr := .Values.inferenceExtension.tracing | default (dict) -}}
{{- if $tr.enabled }}
- name: OTEL_SERVICE_NAME
  value: infergate-epp
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $tr.otelExporterEndpoint | quote }}
- name: OTEL_TRACES_EXPORTER
  value: otlp
- name: OTEL_RESOURCE_ATTRIBUTES_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: OTEL_RESOURCE_ATTRIBUTES_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "k8s.namespace.name=$(NAMESPACE),k8s.node.name=$(OTEL_RESOURCE_ATTRIBUTES_NODE_NAME),k8s.pod.name=$(OTEL_RESOURCE_ATTRIBUTES_POD_NAME)"
{{- with $tr.sampling }}
{{- if .sampler }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .sampler | quote }}
{{- end }}
{{- if ne (toString (.samplerArg | default "")) "" }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ toString .samplerArg | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
The picker's /metrics scheme for the monitors: https with flags.metrics-cert-dir (its certificate
is not checked: the pair is the operator's, often self-signed). A monitor cannot present a client
certificate from this chart, so flags.metrics-client-ca-file with a monitor on fails here.
*/}}
{{- define "infergate.metricsScheme" -}}
{{- $f := .Values.inferenceExtension.flags | default (dict) -}}
{{- if hasKey $f "metrics-client-ca-file" -}}
{{- fail (printf "%s: a monitor from this chart cannot present a client certificate; turn the chart's monitors off and scrape with one of your own" (include "infergate.key" (list . "inferenceExtension.flags.metrics-client-ca-file"))) -}}
{{- end -}}
{{- ternary "https" "http" (hasKey $f "metrics-cert-dir") -}}
{{- end -}}
