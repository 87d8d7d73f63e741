{{/* Names, labels and the webhook certificate shared by the templates. */}}

{{- define "blacktop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's object names: the release name, with "blacktop" appended unless it has it already. */}}
{{- define "blacktop.fullname" -}}
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

{{- define "blacktop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "blacktop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "blacktop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "blacktop.labels" -}}
helm.sh/chart: {{ include "blacktop.chart" . }}
{{ include "blacktop.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: blacktop
{{- end }}

{{- define "blacktop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "blacktop.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "blacktop.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "blacktop.webhookServiceName" -}}
{{- printf "%s-webhook" (include "blacktop.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "blacktop.webhookSecretName" -}}
{{- if eq .Values.webhook.certificate.mode "secret" }}
{{- required "webhook.certificate.existingSecret is required when webhook.certificate.mode is secret" .Values.webhook.certificate.existingSecret }}
{{- else }}
{{- printf "%s-webhook-tls" (include "blacktop.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
The Helm-generated serving certificate, computed once per render and shared by the Secret and the
webhook configuration (so the caBundle always matches). An existing Secret from an earlier release is
reused, so upgrades do not rotate the certificate; `helm template` (no cluster) always generates.
*/}}
{{- define "blacktop.webhookCertificate" -}}
{{- $secretName := include "blacktop.webhookSecretName" . }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $secretName }}
{{- if and $existing $existing.data (index $existing.data "ca.crt") }}
{{- dict "crt" (index $existing.data "tls.crt") "key" (index $existing.data "tls.key") "ca" (index $existing.data "ca.crt") | toJson }}
{{- else }}
{{- $svc := include "blacktop.webhookServiceName" . }}
{{- $days := int .Values.webhook.certificate.validityDays }}
{{- $ca := genCA "blacktop-webhook-ca" $days }}
{{- $dns := list $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace) }}
{{- $cert := genSignedCert (printf "%s.%s.svc" $svc .Release.Namespace) nil $dns $days $ca }}
{{- dict "crt" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc) "ca" ($ca.Cert | b64enc) | toJson }}
{{- end }}
{{- end }}

{{/* The ConfigMap holding the CA of the API server's webhook client certificate (key ca.crt), or "". */}}
{{- define "blacktop.webhookClientCA" -}}
{{- if and .Values.webhook.enabled .Values.webhook.clientAuth.existingConfigMap }}
{{- .Values.webhook.clientAuth.existingConfigMap }}
{{- else if and .Values.webhook.enabled .Values.webhook.clientAuth.caBundle }}
{{- printf "%s-webhook-client-ca" (include "blacktop.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
