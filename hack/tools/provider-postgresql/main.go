// Command terraform-provider-postgresql is Blacktop's PostgreSQL provider (blacktop/postgresql): a
// role and a database, configured from libpq's PG* environment variables (PGHOST, PGPORT, PGUSER,
// PGPASSWORD, PGSSLMODE, PGDATABASE, PGCONNECT_TIMEOUT) or the provider block. It is built from
// source by hack/tools/install.sh into the offline provider mirror, so `tofu init` never needs a
// registry. Its resource and attribute names follow the community provider (postgresql_role,
// postgresql_database), so a module moves between the two by changing only its `source`.
package main

import (
	"context"
	"flag"
	"log"

	"github.com/hashicorp/terraform-plugin-framework/providerserver"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	debug := flag.Bool("debug", false, "run with support for debuggers")
	flag.Parse()
	err := providerserver.Serve(context.Background(), newProvider(version), providerserver.ServeOpts{
		Address: "registry.opentofu.org/blacktop/postgresql",
		Debug:   *debug,
	})
	if err != nil {
		log.Fatal(err)
	}
}
