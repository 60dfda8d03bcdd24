{{/*
Two layouts of values, one chart. The GIE v1.5 `inferencepool` chart's keys (inferenceExtension.*,
inferencePool.*, experimentalHttpRoute) are the chart's own; llm-d-router v0.10's
`llm-d-router-gateway` chart nests the same settings under `router` (router.epp.*,
router.modelServers.*, router.monitoring.*, router.tracing, router.inferencePool.*,
router.inferenceObjectives) and renames experimentalHttpRoute to httpRoute. A values file written
for either installs infergate unchanged.

Every template starts with `include "infergate.normalize" .`, which translates the router layout
onto the chart's own keys in this template's copy of .Values (Helm gives each template its own),
so the templates and helpers read one layout. Where both layouts set the same thing, the router
layout's value wins (it is what a values file written for llm-d-router says); what the router
layout holds that infergate does not honour fails here, naming its router.* key.
*/}}
{{- define "infergate.normalize" -}}
{{- if not (hasKey .Values "_layout") -}}
{{- if .Values.router -}}
{{- $_ := set .Values "_layout" "router" -}}
{{- include "infergate.fromRouterLayout" . -}}
{{- else -}}
{{- $_ := set .Values "_layout" "inferencepool" -}}
{{- $_ := set .Values "_gmp" (eq (lower .Values.provider.name) "gke") -}}
{{- $_ := set .Values "_objectiveApiVersion" "inference.networking.x-k8s.io/v1alpha2" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
A value's name as the user wrote it: the chart's own key, or its router-layout spelling when the
values came in that layout (error messages name what the user can find in their file).
*/}}
{{- define "infergate.key" -}}
{{- $ctx := index . 0 -}}
{{- $key := index . 1 -}}
{{- if eq $ctx.Values._layout "router" -}}
{{- $rules := list
  (list "inferencePool.modelServers." "router.modelServers.")
  (list "inferencePool.modelServerType" "router.modelServers.type")
  (list "inferencePool.modelServerProtocol" "router.modelServers.protocol")
  (list "inferencePool.parser" "router.epp.parsers")
  (list "inferenceExtension.failureMode" "router.inferencePool.failureMode")
  (list "inferenceExtension.tracing" "router.tracing")
  (list "inferenceExtension.latencyPredictor" "router.latencyPredictor")
  (list "inferenceExtension.healthPort" "router.epp.grpcHealthPort")
  (list "inferenceExtension.monitoring" "router.monitoring")
  (list "inferenceExtension." "router.epp.")
  (list "experimentalHttpRoute.enabled" "httpRoute.create")
  (list "experimentalHttpRoute" "httpRoute")
-}}
{{- $done := false -}}
{{- range $rules -}}
{{- if and (not $done) (hasPrefix (index . 0) $key) -}}
{{- $key = printf "%s%s" (index . 1) (trimPrefix (index . 0) $key) -}}
{{- $done = true -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $key -}}
{{- end -}}

{{/* llm-d-router v0.10's values (router.*, httpRoute) onto the chart's own keys. */}}
{{- define "infergate.fromRouterLayout" -}}
{{- $r := .Values.router -}}
{{- $ie := .Values.inferenceExtension -}}
{{- $pool := .Values.inferencePool -}}
{{- $epp := $r.epp | default (dict) -}}
{{- /* Refused first: parts of llm-d-router's chart infergate has no counterpart for. */ -}}
{{- $ipool := $r.inferencePool | default (dict) -}}
{{- if and (hasKey $ipool "create") (not $ipool.create) -}}
{{- fail "router.inferencePool.create: false (standalone mode) is not supported by this chart, whose picker reads the InferencePool it creates; infergate epp --endpoint-selector runs standalone in a Deployment of your own" -}}
{{- end -}}
{{- if ($r.proxy | default (dict)).enabled -}}
{{- fail "router.proxy.enabled: not supported: this chart deploys the picker for a Gateway, which it serves over ext_proc (no proxy sidecar, no standalone mode)" -}}
{{- end -}}
{{- if ($r.tokenizer | default (dict)).enabled -}}
{{- fail "router.tokenizer.enabled: not supported: infergate does not call a tokenizer sidecar (vllm render); prefix scoring estimates tokens from bytes" -}}
{{- end -}}
{{- if dig "gke" "preferredBackends" "enabled" false (.Values.provider | default (dict)) -}}
{{- fail "provider.gke.preferredBackends.enabled: not supported: picker replicas are independent and all serve (no preferred and backup tiers)" -}}
{{- end -}}
{{- range $i, $p := $epp.parsers | default (list) -}}
{{- if not (has $p (list "openai-parser" "anthropic-parser")) -}}
{{- fail (printf "router.epp.parsers[%d]: %q is not supported here: infergate parses OpenAI and Anthropic Messages requests (openai-parser, anthropic-parser, always both); a passthrough-parser needs its paths listed, so declare it in router.epp.pluginsCustomConfig" $i $p) -}}
{{- end -}}
{{- end -}}
{{- /* The picker: keys of the same name and meaning under router.epp. */ -}}
{{- range $k := list "replicas" "extProcPort" "flags" "env" "pluginsConfigFile" "pluginsCustomConfig" "extraContainerPorts" "resources" "affinity" "tolerations" "podAnnotations" "volumes" "volumeMounts" "metricsDataSource" -}}
{{- if hasKey $epp $k -}}{{- $_ := set $ie $k (get $epp $k) -}}{{- end -}}
{{- end -}}
{{- if $epp.image -}}{{- $_ := set $ie "image" (mergeOverwrite (deepCopy $ie.image) $epp.image) -}}{{- end -}}
{{- if hasKey $epp "grpcHealthPort" -}}{{- $_ := set $ie "healthPort" $epp.grpcHealthPort -}}{{- end -}}
{{- if hasKey $r "metricsPort" -}}{{- $_ := set $ie "metricsPort" $r.metricsPort -}}{{- end -}}
{{- if hasKey $r "extraServicePorts" -}}{{- $_ := set $ie "extraServicePorts" $r.extraServicePorts -}}{{- end -}}
{{- if hasKey $r "clusterDomain" -}}{{- $_ := set .Values "clusterDomain" $r.clusterDomain -}}{{- end -}}
{{- if $r.tracing -}}{{- $_ := set $ie "tracing" (mergeOverwrite (deepCopy $ie.tracing) $r.tracing) -}}{{- end -}}
{{- $_ := set $ie "latencyPredictor" (dict "enabled" (($r.latencyPredictor | default (dict)).enabled | default false)) -}}
{{- if hasKey $ipool "failureMode" -}}{{- $_ := set $ie "failureMode" $ipool.failureMode -}}{{- end -}}
{{- /* Monitoring: router.monitoring.provider.name picks the Prometheus Operator (ServiceMonitor)
or Google Managed Prometheus; with auth on, the chart creates the reader token Secret, as the
reference chart does. */ -}}
{{- $m := $r.monitoring | default (dict) -}}
{{- $mon := $ie.monitoring -}}
{{- $prom := $m.prometheus | default (dict) -}}
{{- $provider := lower (dig "provider" "name" "" $m | default "prometheusoperator") -}}
{{- if not (has $provider (list "prometheusoperator" "gmp")) -}}
{{- fail (printf "router.monitoring.provider.name: %q is not one of gmp, prometheusoperator" $provider) -}}
{{- end -}}
{{- $scrape := $prom.enabled | default false -}}
{{- $auth := dig "auth" "enabled" true $prom -}}
{{- if hasKey $m "interval" -}}{{- $_ := set $mon "interval" $m.interval -}}{{- end -}}
{{- $_ := set $mon.prometheus "enabled" (and $scrape (eq $provider "prometheusoperator")) -}}
{{- $_ := set $mon.prometheus.auth "enabled" $auth -}}
{{- $_ := set $mon.prometheus.auth "secretName" (dig "auth" "secretName" "inference-gateway-sa-metrics-reader-secret" $prom) -}}
{{- if hasKey $prom "extraLabels" -}}{{- $_ := set $mon.prometheus "extraLabels" $prom.extraLabels -}}{{- end -}}
{{- $_ := set $mon.gke "enabled" (and $scrape (eq $provider "gmp")) -}}
{{- $_ := set $mon.secret "create" (and $scrape $auth) -}}
{{- $_ := set .Values "_gmp" (eq $provider "gmp") -}}
{{- if dig "provider" "gmp" "autopilot" false $m -}}{{- $_ := set .Values.provider.gke "autopilot" true -}}{{- end -}}
{{- /* The pool. */ -}}
{{- $ms := $r.modelServers | default (dict) -}}
{{- if $ms.matchLabels -}}{{- $_ := set $pool.modelServers "matchLabels" $ms.matchLabels -}}{{- end -}}
{{- if hasKey $ms "targetPorts" -}}{{- $_ := set $pool "targetPorts" $ms.targetPorts -}}{{- end -}}
{{- if hasKey $ms "type" -}}
{{- if eq (lower $ms.type) "triton" -}}
{{- fail "router.modelServers.type: \"triton\" is not supported: infergate reads vllm, sglang and TensorRT-LLM metrics (triton-tensorrt-llm, trtllm-serve)" -}}
{{- end -}}
{{- $_ := set $pool "modelServerType" $ms.type -}}
{{- end -}}
{{- if hasKey $ms "protocol" -}}
{{- $_ := set $pool "modelServerProtocol" $ms.protocol -}}
{{- if eq $ms.protocol "http" -}}{{- $_ := set $pool "appProtocol" "http" -}}{{- end -}}
{{- end -}}
{{- /* Objectives are written in llm-d-router's API group, as its chart does. */ -}}
{{- $_ := set .Values "inferenceObjectives" (concat (.Values.inferenceObjectives | default (list)) ($r.inferenceObjectives | default (list))) -}}
{{- $_ := set .Values "_objectiveApiVersion" "llm-d.ai/v1alpha2" -}}
{{- /* httpRoute is experimentalHttpRoute renamed (create for enabled). */ -}}
{{- with .Values.httpRoute -}}
{{- $route := mergeOverwrite (deepCopy ($.Values.experimentalHttpRoute | default (dict))) (omit . "create") -}}
{{- $_ := set $route "enabled" (.create | default false) -}}
{{- $_ := set $.Values "experimentalHttpRoute" $route -}}
{{- end -}}
{{- end -}}
