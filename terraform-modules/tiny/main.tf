# tiny: a golden path with no provider at all (built-in resources only). It provisions in about a
# second, so tests and benchmarks measure Blacktop itself rather than a cloud API.

terraform {
  required_version = ">= 1.6"
}

variable "name" {
  type        = string
  description = "Name of the service (a DNS label)."
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.name))
    error_message = "name must be a DNS label: lowercase letters, digits and '-', at most 63 characters."
  }
}

variable "size" {
  type        = string
  default     = "small"
  description = "small, medium or large."
  validation {
    condition     = contains(["small", "medium", "large"], var.size)
    error_message = "size must be one of small, medium, large."
  }
}

variable "fail" {
  type        = bool
  default     = false
  description = "Make the apply fail (to exercise failure handling)."
}

resource "terraform_data" "service" {
  input = {
    name = var.name
    size = var.size
  }

  lifecycle {
    postcondition {
      condition     = !var.fail
      error_message = "the tiny service failed to start because fail = true was requested."
    }
  }
}

locals {
  endpoint = "tiny://${var.name}.${var.size}.svc:8080"
}

output "id" {
  value = terraform_data.service.id
}

output "name" {
  value = var.name
}

output "endpoint" {
  value = local.endpoint
}

output "token" {
  value     = sha256("${terraform_data.service.id}/${var.name}")
  sensitive = true
}
