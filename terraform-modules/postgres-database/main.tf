# postgres-database: a database and its own login role, with a generated password, on the platform's
# PostgreSQL server. The server and the admin credentials never appear here: the golden path's
# credentials Secret reaches the provider as libpq's environment variables (PGHOST, PGPORT, PGUSER,
# PGPASSWORD, PGSSLMODE). Names are `<environment>__<database>` (dashes of the environment become
# `_`, the separator is a double `_` that neither part can hold), so two environments sharing one
# server can both ask for a database called `orders` and no two requests of different environments
# ever get the same name: environment `a-b` with database `c` is `a_b__c`, environment `a` with `b_c`
# is `a__b_c`.

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

variable "uid" {
  type        = string
  description = "The ServiceRequest's uid: what marks the role and database as this request's."
}

variable "database" {
  type        = string
  default     = null
  description = "Database name (default: the request's name)."
  validation {
    condition     = var.database == null || can(regex("^[a-z][a-z0-9]*(_[a-z0-9]+)*$", var.database))
    error_message = "database must start with a lowercase letter and hold only lowercase letters, digits and single '_' between them."
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
  # Environments are DNS labels (no `_`); the database part never holds `__` nor starts or ends with `_`
  # (the request name's runs of other characters become one `_`), so the split at the last `__` is unique.
  environment_part = replace(lower(var.environment), "-", "_")
  database_part    = var.database != null ? var.database : trim(replace(lower(var.name), "/[^a-z0-9]+/", "_"), "_")
  joined           = "${local.environment_part}__${local.database_part}"
  # Role names starting with pg_ are reserved by PostgreSQL (an environment called pg-dev...): such names
  # get a leading `_`, which no other name can start with, so the rename collides with nothing.
  db_name          = startswith(local.joined, "pg_") ? "_${local.joined}" : local.joined
  connection_limit = { small = 10, medium = 50, large = 200 }[var.size]
  # Marks what this request created, by its uid (never by names a tenant chooses): if a run dies after
  # CREATE but before the state is saved, the next run adopts its own role and database instead of
  # failing (or making a second one); a same-named object with any other mark is refused.
  owner_mark = "managed by blacktop for request ${var.uid}"
}

resource "random_password" "role" {
  length  = 32
  special = false # the password goes into a URI unescaped
}

resource "postgresql_role" "app" {
  name             = local.db_name
  lifecycle {
    # Truncating would make two long names one; refuse instead.
    precondition {
      condition     = length(local.db_name) <= 63
      error_message = "the database name ${local.db_name} is longer than PostgreSQL's 63 characters: choose a shorter database parameter."
    }
  }
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
