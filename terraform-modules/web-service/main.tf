# web-service: a Deployment and a Service running one container image in the request's namespace,
# with HTTP probes and resource requests sized to fit the environment's limits. Every object is
# labelled as made by the golden path (and its pods carry the request's name, which Blacktop's
# PodMonitor selects). The provider takes its cluster credentials from the environment of the run:
# KUBE_HOST, KUBE_TOKEN and KUBE_CLUSTER_CA_CERT_DATA from the golden path's credentials Secret, the
# token of a deployer ServiceAccount that may manage Deployments and Services (never the operator's).

terraform {
  required_version = ">= 1.6"
  required_providers {
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 3.2"
    }
  }
}

provider "kubernetes" {}

variable "name" {
  type        = string
  description = "Name of the service (the request's name): its Deployment, Service and DNS name."
  validation {
    condition     = can(regex("^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$", var.name))
    error_message = "name must be a DNS label that starts with a letter, at most 63 characters."
  }
}

variable "namespace" {
  type        = string
  description = "The environment's namespace (set by Blacktop)."
}

variable "environment" {
  type    = string
  default = ""
}

variable "team" {
  type    = string
  default = ""
}

variable "tier" {
  type    = string
  default = ""
}

variable "golden_path" {
  type        = string
  default     = "web-service"
  description = "The golden path that made it (a label on every object)."
}

variable "image" {
  type        = string
  description = "Container image, e.g. registry.example.com/team/app:1.2.3."
  validation {
    condition     = can(regex("^[a-z0-9][a-zA-Z0-9./_:@-]{0,254}$", var.image))
    error_message = "image must be an image reference like registry.example.com/team/app:1.2.3."
  }
}

variable "port" {
  type        = number
  default     = 8080
  description = "Port the container serves HTTP on."
}

variable "replicas" {
  type    = number
  default = 1
  validation {
    condition     = var.replicas >= 1 && var.replicas <= 3
    error_message = "replicas must be between 1 and 3."
  }
}

variable "size" {
  type        = string
  default     = "small"
  description = "small or medium: the container's requests and limits."
  validation {
    condition     = contains(["small", "medium"], var.size)
    error_message = "size must be small or medium."
  }
}

variable "health_path" {
  type        = string
  default     = "/"
  description = "HTTP path the readiness and liveness probes ask."
}

variable "wait_for_rollout" {
  type        = bool
  default     = true
  description = "Wait until the Deployment's pods are Ready before the request is (false: once the objects exist)."
}

locals {
  # Within the environment's default container limits (500m CPU, 512Mi): 3 medium replicas fit the
  # default quota (4 CPU, 8Gi) with room to spare.
  sizes = {
    small  = { requests = { cpu = "50m", memory = "64Mi" }, limits = { cpu = "200m", memory = "128Mi" } }
    medium = { requests = { cpu = "100m", memory = "128Mi" }, limits = { cpu = "500m", memory = "512Mi" } }
  }
  selector = {
    "app.kubernetes.io/name"                 = var.name
    "platform.blacktop.dev/service-request" = var.name
  }
  labels = merge(local.selector, {
    "app.kubernetes.io/managed-by"      = "blacktop"
    "app.kubernetes.io/part-of"         = var.environment
    "platform.blacktop.dev/golden-path" = var.golden_path
    "platform.blacktop.dev/team"        = var.team
    "platform.blacktop.dev/tier"        = var.tier
  })
}

resource "kubernetes_deployment_v1" "service" {
  metadata {
    name      = var.name
    namespace = var.namespace
    labels    = local.labels
  }

  spec {
    replicas = var.replicas
    selector {
      match_labels = local.selector
    }
    template {
      metadata {
        labels = local.labels
      }
      spec {
        automount_service_account_token = false
        security_context {
          run_as_non_root = true
          run_as_user     = 65532
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }
        container {
          name  = "app"
          image = var.image
          port {
            name           = "http"
            container_port = var.port
          }
          resources {
            requests = local.sizes[var.size].requests
            limits   = local.sizes[var.size].limits
          }
          readiness_probe {
            http_get {
              path = var.health_path
              port = "http"
            }
            period_seconds = 5
          }
          liveness_probe {
            http_get {
              path = var.health_path
              port = "http"
            }
            initial_delay_seconds = 10
            period_seconds        = 10
          }
          security_context {
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            capabilities {
              drop = ["ALL"]
            }
          }
        }
      }
    }
  }

  wait_for_rollout = var.wait_for_rollout
  timeouts {
    create = "5m"
    update = "5m"
  }
}

resource "kubernetes_service_v1" "service" {
  metadata {
    name      = var.name
    namespace = var.namespace
    labels    = local.labels
  }
  spec {
    selector = local.selector
    port {
      name        = "http"
      port        = 80
      target_port = "http"
    }
  }
}

output "url" {
  description = "In-cluster URL of the service."
  value       = "http://${kubernetes_service_v1.service.metadata[0].name}.${var.namespace}.svc.cluster.local"
}

output "host" {
  value = "${kubernetes_service_v1.service.metadata[0].name}.${var.namespace}.svc.cluster.local"
}

output "port" {
  value = 80
}
