package main

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/datasource/schema"
	"github.com/hashicorp/terraform-plugin-framework/types"
)

// serverDataSource tells a module where the provider connects (from the provider block or the PG*
// variables), so a module can hand applications the address without repeating the credentials.
type serverDataSource struct{ client *client }

type serverModel struct {
	Host types.String `tfsdk:"host"`
	Port types.Int64  `tfsdk:"port"`
}

func newServer() datasource.DataSource { return &serverDataSource{} }

func (d *serverDataSource) Metadata(_ context.Context, req datasource.MetadataRequest, resp *datasource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_server"
}

func (d *serverDataSource) Schema(_ context.Context, _ datasource.SchemaRequest, resp *datasource.SchemaResponse) {
	resp.Schema = schema.Schema{
		Description: "The server the provider is configured for (no connection is made).",
		Attributes: map[string]schema.Attribute{
			"host": schema.StringAttribute{Computed: true, Description: "Host name or address."},
			"port": schema.Int64Attribute{Computed: true, Description: "Port."},
		},
	}
}

func (d *serverDataSource) Configure(_ context.Context, req datasource.ConfigureRequest, resp *datasource.ConfigureResponse) {
	d.client = clientOf(req.ProviderData, &resp.Diagnostics)
}

func (d *serverDataSource) Read(ctx context.Context, _ datasource.ReadRequest, resp *datasource.ReadResponse) {
	if d.client == nil {
		resp.Diagnostics.AddError("provider not configured", "the postgresql provider block could not be configured")
		return
	}
	state := serverModel{Host: types.StringValue(d.client.config.Host), Port: types.Int64Value(int64(d.client.config.Port))}
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}
