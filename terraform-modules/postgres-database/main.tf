# postgres-database: a database and its own login role, with a generated password, on the platform's
# PostgreSQL server. The server and the admin credentials never appear here: the golden path's
# credentials Secret reaches the provider as libpq's environment variables (PGHOST, PGPORT, PGUSER,
# PGPASSWORD, PGSSLMODE). Names are prefixed with the environment, so two environments sharing one
# server can both ask for a database called `orders`.

terraform {
  required_version = ">= 1.6"
  required_providers {
    postgresql = {
      source  = "blacktop/postgresql"
      version = "0.1.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "3.9.0"
    }
  }
}

provider "postgresql" {}

variable "name" {
  type        = string
  description = "Name of the ServiceRequest."
}

variable "namespace" {
  type        = string
  description = "Namespace of the ServiceRequest."
}

variable "environment" {
  type        = string
  description = "Environment the request belongs to (prefixes the names on the shared server)."
}

variable "team" {
  type        = string
  default     = null
  description = "Owning team."
}

variable "tier" {
  type        = string
  default     = null
  description = "dev, staging or prod."
}

variable "database" {
  type        = string
  default     = null
  description = "Database name (default: the request's name)."
  validation {
    condition     = var.database == null || can(regex("^[a-z][a-z0-9_]{0,62}$", var.database))
    error_message = "database must start with a lowercase letter and hold only lowercase letters, digits and '_'."
  }
}

variable "size" {
  type        = string
  default     = "small"
  description = "small, medium or large: the role's connection limit."
  validation {
    condition     = contains(["small", "medium", "large"], var.size)
    error_message = "size must be one of small, medium, large."
  }
}

locals {
  base  = "${var.environment}_${coalesce(var.database, var.name)}"
  clean = replace(lower(local.base), "/[^a-z0-9_]/", "_")
  # Role names starting with pg_ are reserved by PostgreSQL (an environment called pg-dev...).
  db_name          = substr(startswith(local.clean, "pg_") ? "db_${local.clean}" : local.clean, 0, 63)
  connection_limit = { small = 10, medium = 50, large = 200 }[var.size]
  # Marks what this request created: if a run dies after CREATE but before the state is saved, the
  # next run adopts its own role and database instead of failing (or making a second one).
  owner_mark = "managed by blacktop for ${var.namespace}/${var.name}"
}

resource "random_password" "role" {
  length  = 32
  special = false # the password goes into a URI unescaped
}

resource "postgresql_role" "app" {
  name             = local.db_name
  login            = true
  password         = random_password.role.result
  connection_limit = local.connection_limit
  comment          = local.owner_mark
}

resource "postgresql_database" "app" {
  name             = local.db_name
  owner            = postgresql_role.app.name
  connection_limit = local.connection_limit
  comment          = local.owner_mark
}

data "postgresql_server" "this" {}

output "host" {
  value = data.postgresql_server.this.host
}

output "port" {
  value = tostring(data.postgresql_server.this.port)
}

output "database" {
  value = postgresql_database.app.name
}

output "username" {
  value = postgresql_role.app.name
}

output "password" {
  value     = random_password.role.result
  sensitive = true
}

output "uri" {
  value     = "postgresql://${postgresql_role.app.name}:${random_password.role.result}@${data.postgresql_server.this.host}:${data.postgresql_server.this.port}/${postgresql_database.app.name}"
  sensitive = true
}
