{{/*
Two layouts of values, one chart. The GIE v1.5 `inferencepool` chart's keys (inferenceExtension.*,
inferencePool.*, experimentalHttpRoute) are the chart's own; llm-d-router v0.10's
`llm-d-router-gateway` chart nests the same settings under `router` (router.epp.*,
router.modelServers.*, router.monitoring.*, router.tracing, router.inferencePool.*,
router.inferenceObjectives) and renames experimentalHttpRoute to httpRoute. A values file written
for either installs infergate unchanged. Its `llm-d-router-standalone` chart's values (the same
`router` block with router.proxy.enabled: true, or router.inferencePool.create: false) select the
standalone layout: infergate serve for the Pods a label selector picks, no InferencePool (see
infergate.standaloneFromRouter below; .Values._standalone tells the templates).

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
{{- /* Standalone (llm-d-router-standalone's values): see infergate.standaloneFromRouter. */ -}}
{{- $proxy := $r.proxy | default (dict) -}}
{{- $noPool := and (hasKey $ipool "create") (not $ipool.create) -}}
{{- if and $noPool (hasKey $proxy "enabled") (not $proxy.enabled) -}}
{{- fail "router.inferencePool.create: false with router.proxy.enabled: false asks for a picker alone that selects Pods by label and serves ext_proc to a proxy of your own; this chart's standalone layout runs infergate serve, the picker and its built-in proxy in one process: drop router.proxy.enabled: false (or set it true) to get it, keep the InferencePool (create: true) for a Gateway, or run infergate epp --endpoint-selector in a Deployment of your own" -}}
{{- end -}}
{{- if and $proxy.enabled (hasKey $ipool "create") $ipool.create -}}
{{- fail "router.inferencePool.create: true with router.proxy.enabled: true: this chart's standalone layout (router.proxy.enabled) selects the Pods by label and creates no InferencePool (nor its objectives); drop router.inferencePool.create (or set it false) for the standalone layout, or drop router.proxy for an InferencePool behind a Gateway" -}}
{{- end -}}
{{- $standalone := or $proxy.enabled $noPool -}}
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
{{- if $standalone -}}
{{- $_ := set .Values "_standalone" true -}}
{{- include "infergate.standaloneFromRouter" . -}}
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

{{/*
llm-d-router's standalone layout: `router.proxy.enabled: true` (what llm-d-router-standalone's own
values set; its gateway chart renders no proxy) or `router.inferencePool.create: false` (its
chart's switch from the InferencePool to the picker's --endpoint-selector). Upstream runs the
picker with an Envoy (or Agentgateway) sidecar in front; here one process does both: `infergate
serve --endpoint-selector ...`, the picker and its built-in proxy, listening where the Envoy
listener did (the Service port named `http`, 8081). Nothing Gateway-related is rendered: no
InferencePool, objective, HTTPRoute or provider object. What cannot apply fails naming the key;
what upstream's values carry but has no meaning here is listed in NOTES.txt (.Values._unused).
*/}}
{{- define "infergate.standaloneFromRouter" -}}
{{- $r := .Values.router -}}
{{- $ie := .Values.inferenceExtension -}}
{{- $epp := $r.epp | default (dict) -}}
{{- $proxy := $r.proxy | default (dict) -}}
{{- $unused := list -}}
{{- $mode := lower (toString ($proxy.mode | default "sidecar")) -}}
{{- if eq $mode "service" -}}
{{- fail "router.proxy.mode: \"service\" is not supported: infergate's proxy runs in the picker's own process (infergate serve), so there is no separate proxy Deployment to scale; use mode: sidecar (the default) and scale with router.epp.replicas: every replica is a proxy and a picker behind the Service" -}}
{{- else if ne $mode "sidecar" -}}
{{- fail (printf "router.proxy.mode: %q is not one of sidecar, service" $mode) -}}
{{- end -}}
{{- $type := lower (toString ($proxy.proxyType | default "envoy")) -}}
{{- if ne $type "envoy" -}}
{{- fail (printf "router.proxy.proxyType: %q is not supported: infergate serve's built-in proxy takes the place of the Envoy sidecar (proxyType: envoy); no %s container is deployed" $type $type) -}}
{{- end -}}
{{- /* Keys of the proxy container itself (upstream's explicit overrides of the preset): set by the user, and nothing here to apply them to. */ -}}
{{- range $k := list "name" "image" "imagePullPolicy" "command" "args" "env" "ports" "livenessProbe" "readinessProbe" "startupProbe" "securityContext" "volumeMounts" "volumes" "configMap" "configMapData" "agentgateway" -}}
{{- if hasKey $proxy $k -}}
{{- fail (printf "router.proxy.%s: not supported: no proxy container is deployed; infergate serve's built-in proxy runs in the picker's container, which router.epp.* configures" $k) -}}
{{- end -}}
{{- end -}}
{{- if hasKey $proxy "failOpen" -}}
{{- if not (kindIs "bool" $proxy.failOpen) -}}
{{- fail (printf "router.proxy.failOpen: must be true or false, got %q" (toString $proxy.failOpen)) -}}
{{- end -}}
{{- $unused = append $unused (printf "router.proxy.failOpen (%v): not used, because the picker runs in the proxy's own process, so the proxy never has to route without it; a request no endpoint can take is queued, then answered 503/429 by the proxy" $proxy.failOpen) -}}
{{- end -}}
{{- if hasKey $proxy "presets" -}}
{{- $unused = append $unused "router.proxy.presets: not used, because no Envoy or Agentgateway container is deployed: infergate serve's built-in proxy listens on the http port itself (its settings: router.epp.flags and the EndpointPickerConfig)" -}}
{{- end -}}
{{- if hasKey $proxy "replicas" -}}
{{- $unused = append $unused (printf "router.proxy.replicas (%v): not used, because it sizes the proxy Deployment of mode: service; the picker and its proxy are one container and scale together with router.epp.replicas" $proxy.replicas) -}}
{{- end -}}
{{- range $k := list "extProcPort" "grpcHealthPort" -}}
{{- if hasKey $epp $k -}}
{{- $unused = append $unused (printf "router.epp.%s (%v): not used, because infergate serve serves no ext_proc gRPC (the proxy calls the picker in-process); probes use the admin port's /healthz and /readyz" $k (get $epp $k)) -}}
{{- end -}}
{{- end -}}
{{- if hasKey ($r.inferencePool | default (dict)) "failureMode" -}}
{{- $unused = append $unused (printf "router.inferencePool.failureMode (%v): not used, because it is written on an InferencePool for a Gateway, and the standalone layout has neither" $r.inferencePool.failureMode) -}}
{{- end -}}
{{- /* The proxy's resources for the one container, unless the picker's are given. */ -}}
{{- if and (not (hasKey $epp "resources")) $proxy.resources -}}
{{- $_ := set $ie "resources" $proxy.resources -}}
{{- end -}}
{{- /* Gateway-side objects: none in this layout. */ -}}
{{- if or $r.inferenceObjectives .Values.inferenceObjectives -}}
{{- fail "router.inferenceObjectives: not supported in the standalone layout: there is no InferencePool for objectives to name, and infergate serve --endpoint-selector reads none (every request has the default priority), as llm-d-router refuses them with router.inferencePool.create: false" -}}
{{- end -}}
{{- if or (dig "create" false (.Values.httpRoute | default (dict))) .Values.experimentalHttpRoute.enabled -}}
{{- fail "httpRoute.create: not supported in the standalone layout: there is no Gateway and no InferencePool to route to; clients call the picker Service's http port (infergate serve's built-in proxy)" -}}
{{- end -}}
{{- if ne (lower .Values.provider.name) "none" -}}
{{- fail (printf "provider.name: %q is not supported in the standalone layout: its objects (GKE HealthCheckPolicy and GCPBackendPolicy, Istio DestinationRule) configure a Gateway and an InferencePool, which this layout does not have" .Values.provider.name) -}}
{{- end -}}
{{- if and (ne (lower .Values.inferencePool.modelServerType) "vllm") (ne $ie.pluginsConfigFile "default-plugins.yaml") -}}
{{- fail (printf "router.modelServers.type: %q with a config of your own (%s): without an InferencePool to carry the engine, the chart passes it as core-metrics-extractor's defaultEngine in its default config only; set defaultEngine: %s in yours (or label the Pods llm-d.ai/engine-type) and leave router.modelServers.type at vllm" .Values.inferencePool.modelServerType $ie.pluginsConfigFile .Values.inferencePool.modelServerType) -}}
{{- end -}}
{{- /* The proxy's port: the Service port named http (the Envoy listener's), its targetPort when numeric. */ -}}
{{- $http := list -}}
{{- range $i, $p := $ie.extraServicePorts | default (list) -}}
{{- if eq (toString (get $p "name")) "http" -}}{{- $http = append $http (list $i $p) -}}{{- end -}}
{{- end -}}
{{- if gt (len $http) 1 -}}
{{- fail "router.extraServicePorts: more than one port is named \"http\"; the one named http is the built-in proxy's" -}}
{{- end -}}
{{- if $http -}}
{{- $i := index (first $http) 0 -}}
{{- $p := index (first $http) 1 -}}
{{- $port := toString $p.port -}}
{{- if not (regexMatch "^[0-9]+$" $port) -}}
{{- fail (printf "router.extraServicePorts[%d].port: %q must be a port number (the proxy's Service port)" $i $port) -}}
{{- end -}}
{{- $target := $port -}}
{{- if hasKey $p "targetPort" -}}
{{- $t := toString $p.targetPort -}}
{{- if regexMatch "^[0-9]+$" $t -}}{{- $target = $t -}}
{{- else if ne $t "http" -}}
{{- fail (printf "router.extraServicePorts[%d].targetPort: %q is neither a number nor \"http\" (the name of the proxy's container port)" $i $t) -}}
{{- end -}}
{{- end -}}
{{- if or (lt (atoi $target) 1) (gt (atoi $target) 65535) -}}
{{- fail (printf "router.extraServicePorts[%d]: the proxy's port %s is not in 1..65535" $i $target) -}}
{{- end -}}
{{- $_ := set .Values "_proxyPort" (atoi $target) -}}
{{- $_ := set .Values "_proxyServicePort" false -}}
{{- else -}}
{{- $_ := set .Values "_proxyPort" 8081 -}}
{{- $_ := set .Values "_proxyServicePort" true -}}
{{- end -}}
{{- $_ := set .Values "_unused" $unused -}}
{{- end -}}
