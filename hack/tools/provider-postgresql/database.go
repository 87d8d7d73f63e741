package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/int64default"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/jackc/pgx/v5"
)

type databaseResource struct{ client *client }

type databaseModel struct {
	ID              types.String `tfsdk:"id"`
	Name            types.String `tfsdk:"name"`
	Owner           types.String `tfsdk:"owner"`
	ConnectionLimit types.Int64  `tfsdk:"connection_limit"`
	Comment         types.String `tfsdk:"comment"`
}

func newDatabase() resource.Resource { return &databaseResource{} }

func (r *databaseResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_database"
}

func (r *databaseResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	resp.Schema = schema.Schema{
		Description: "A PostgreSQL database.",
		Attributes: map[string]schema.Attribute{
			"id": schema.StringAttribute{
				Computed: true, PlanModifiers: []planmodifier.String{stringplanmodifier.UseStateForUnknown()},
			},
			"name": schema.StringAttribute{
				Required: true, Description: "Database name.",
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()},
			},
			"owner": schema.StringAttribute{
				Optional: true, Computed: true, Description: "Owning role (default: the connecting role).",
				PlanModifiers: []planmodifier.String{stringplanmodifier.UseStateForUnknown()},
			},
			"connection_limit": schema.Int64Attribute{
				Optional: true, Computed: true, Default: int64default.StaticInt64(-1),
				Description: "Concurrent connections allowed (-1: no limit).",
			},
			"comment": schema.StringAttribute{
				Optional: true,
				Description: "Comment on the database. Creating a database that exists already adopts it when " +
					"its comment is this one, or it has none and belongs to `owner` (a run that died between " +
					"CREATE DATABASE and COMMENT, which cannot share a transaction); it fails otherwise.",
			},
		},
	}
}

func (r *databaseResource) Configure(_ context.Context, req resource.ConfigureRequest, resp *resource.ConfigureResponse) {
	r.client = clientOf(req.ProviderData, &resp.Diagnostics)
}

func (r *databaseResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var plan databaseModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	sql := fmt.Sprintf("CREATE DATABASE %s CONNECTION LIMIT %d", ident(plan.Name.ValueString()), plan.ConnectionLimit.ValueInt64())
	if plan.Owner.ValueString() != "" {
		sql += " OWNER " + ident(plan.Owner.ValueString())
	}
	name := plan.Name.ValueString()
	err := r.client.exec(ctx, sql)
	if isCode(err, "42P04") && plan.Comment.ValueString() != "" { // duplicate_database
		if r.adoptable(ctx, &plan) {
			err = r.alter(ctx, &plan)
			resp.Diagnostics.AddWarning("adopted database "+name, "it existed and is ours (an earlier run was interrupted)")
		} else {
			err = fmt.Errorf("database %s already exists and is not managed by this configuration: %w", name, err)
		}
	} else if err == nil && plan.Comment.ValueString() != "" {
		err = r.client.exec(ctx, "COMMENT ON DATABASE "+ident(name)+" IS "+literal(plan.Comment.ValueString()))
	}
	if err != nil {
		resp.Diagnostics.AddError("could not create database "+name, err.Error())
		return
	}
	r.read(ctx, &plan, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

// read refreshes m from the server; false when the database does not exist.
func (r *databaseResource) read(ctx context.Context, m *databaseModel, diags interface{ AddError(string, string) }) bool {
	conn, err := r.client.connect(ctx)
	if err != nil {
		diags.AddError("could not read database "+m.Name.ValueString(), err.Error())
		return false
	}
	defer conn.Close(context.Background())
	var owner string
	var limit int64
	err = conn.QueryRow(ctx, "SELECT pg_get_userbyid(datdba), datconnlimit FROM pg_database WHERE datname = $1",
		m.Name.ValueString()).Scan(&owner, &limit)
	if errors.Is(err, pgx.ErrNoRows) {
		return false
	}
	if err != nil {
		diags.AddError("could not read database "+m.Name.ValueString(), err.Error())
		return false
	}
	m.ID = m.Name
	m.Owner = types.StringValue(owner)
	m.ConnectionLimit = types.Int64Value(limit)
	return true
}

func (r *databaseResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var state databaseModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	if !r.read(ctx, &state, &resp.Diagnostics) {
		if !resp.Diagnostics.HasError() {
			resp.State.RemoveResource(ctx) // dropped out of band: the next plan creates it again
		}
		return
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

func (r *databaseResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var plan databaseModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	if err := r.alter(ctx, &plan); err != nil {
		resp.Diagnostics.AddError("could not update database "+plan.Name.ValueString(), err.Error())
		return
	}
	r.read(ctx, &plan, &resp.Diagnostics)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

// alter brings an existing database to the plan (owner, limit, comment).
func (r *databaseResource) alter(ctx context.Context, plan *databaseModel) error {
	name := ident(plan.Name.ValueString())
	statements := []string{fmt.Sprintf("ALTER DATABASE %s CONNECTION LIMIT %d", name, plan.ConnectionLimit.ValueInt64())}
	if plan.Owner.ValueString() != "" {
		statements = append(statements, "ALTER DATABASE "+name+" OWNER TO "+ident(plan.Owner.ValueString()))
	}
	if !plan.Comment.IsNull() {
		statements = append(statements, "COMMENT ON DATABASE "+name+" IS "+literal(plan.Comment.ValueString()))
	}
	return r.client.exec(ctx, statements...)
}

// adoptable: an existing database carries our comment, or none and belongs to our owner.
func (r *databaseResource) adoptable(ctx context.Context, plan *databaseModel) bool {
	comment, err := r.client.queryString(ctx,
		"SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1", plan.Name.ValueString())
	if err != nil {
		return false
	}
	if comment != "" {
		return comment == plan.Comment.ValueString()
	}
	owner, err := r.client.queryString(ctx,
		"SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1", plan.Name.ValueString())
	return err == nil && plan.Owner.ValueString() != "" && owner == plan.Owner.ValueString()
}

func (r *databaseResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var state databaseModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	// WITH (FORCE): sessions of the application still connected must not keep the database alive.
	if err := r.client.exec(ctx, "DROP DATABASE IF EXISTS "+ident(state.Name.ValueString())+" WITH (FORCE)"); err != nil {
		resp.Diagnostics.AddError("could not drop database "+state.Name.ValueString(), err.Error())
	}
}
