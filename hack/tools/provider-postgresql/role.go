package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/booldefault"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/int64default"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/jackc/pgx/v5"
)

type roleResource struct{ client *client }

type roleModel struct {
	ID              types.String `tfsdk:"id"`
	Name            types.String `tfsdk:"name"`
	Login           types.Bool   `tfsdk:"login"`
	Password        types.String `tfsdk:"password"`
	ConnectionLimit types.Int64  `tfsdk:"connection_limit"`
	Comment         types.String `tfsdk:"comment"`
}

func newRole() resource.Resource { return &roleResource{} }

func (r *roleResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_role"
}

func (r *roleResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	resp.Schema = schema.Schema{
		Description: "A PostgreSQL role.",
		Attributes: map[string]schema.Attribute{
			"id": schema.StringAttribute{
				Computed: true, PlanModifiers: []planmodifier.String{stringplanmodifier.UseStateForUnknown()},
			},
			"name": schema.StringAttribute{
				Required: true, Description: "Role name.",
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()},
			},
			"login": schema.BoolAttribute{
				Optional: true, Computed: true, Default: booldefault.StaticBool(true), Description: "May log in.",
			},
			"password": schema.StringAttribute{
				Optional: true, Sensitive: true, Description: "Password (never read back from the server).",
			},
			"connection_limit": schema.Int64Attribute{
				Optional: true, Computed: true, Default: int64default.StaticInt64(-1),
				Description: "Concurrent connections allowed (-1: no limit).",
			},
			"comment": schema.StringAttribute{
				Optional: true,
				Description: "Comment on the role. It also marks ownership: creating a role that exists already " +
					"adopts it when its comment is this one (a run that died after creating it), and fails otherwise.",
			},
		},
	}
}

func (r *roleResource) Configure(_ context.Context, req resource.ConfigureRequest, resp *resource.ConfigureResponse) {
	r.client = clientOf(req.ProviderData, &resp.Diagnostics)
}

func (m *roleModel) options() string {
	login := "NOLOGIN"
	if m.Login.ValueBool() {
		login = "LOGIN"
	}
	options := fmt.Sprintf("%s CONNECTION LIMIT %d", login, m.ConnectionLimit.ValueInt64())
	if !m.Password.IsNull() {
		options += " PASSWORD " + literal(m.Password.ValueString())
	}
	return options
}

func (r *roleResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var plan roleModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	name := plan.Name.ValueString()
	statements := []string{"CREATE ROLE " + ident(name) + " WITH " + plan.options()}
	if plan.Comment.ValueString() != "" {
		statements = append(statements, "COMMENT ON ROLE "+ident(name)+" IS "+literal(plan.Comment.ValueString()))
	}
	err := r.client.inTransaction(ctx, statements...)
	if isCode(err, "42710") && plan.Comment.ValueString() != "" { // duplicate_object
		comment, qerr := r.client.queryString(ctx,
			"SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1", name)
		if qerr == nil && comment == plan.Comment.ValueString() {
			err = r.client.exec(ctx, "ALTER ROLE "+ident(name)+" WITH "+plan.options())
			resp.Diagnostics.AddWarning("adopted role "+name, "it existed with this configuration's comment (an earlier run was interrupted)")
		} else {
			err = fmt.Errorf("role %s already exists and is not managed by this configuration: %w", name, err)
		}
	}
	if err != nil {
		resp.Diagnostics.AddError("could not create role "+name, err.Error())
		return
	}
	plan.ID = plan.Name
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *roleResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var state roleModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	conn, err := r.client.connect(ctx)
	if err != nil {
		resp.Diagnostics.AddError("could not read role "+state.Name.ValueString(), err.Error())
		return
	}
	defer conn.Close(context.Background())
	var login bool
	var limit int64
	err = conn.QueryRow(ctx, "SELECT rolcanlogin, rolconnlimit FROM pg_roles WHERE rolname = $1", state.Name.ValueString()).
		Scan(&login, &limit)
	if errors.Is(err, pgx.ErrNoRows) {
		resp.State.RemoveResource(ctx) // dropped out of band: the next plan creates it again
		return
	}
	if err != nil {
		resp.Diagnostics.AddError("could not read role "+state.Name.ValueString(), err.Error())
		return
	}
	state.Login = types.BoolValue(login)
	state.ConnectionLimit = types.Int64Value(limit)
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

func (r *roleResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var plan roleModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	statements := []string{"ALTER ROLE " + ident(plan.Name.ValueString()) + " WITH " + plan.options()}
	if !plan.Comment.IsNull() {
		statements = append(statements, "COMMENT ON ROLE "+ident(plan.Name.ValueString())+" IS "+literal(plan.Comment.ValueString()))
	}
	if err := r.client.inTransaction(ctx, statements...); err != nil {
		resp.Diagnostics.AddError("could not update role "+plan.Name.ValueString(), err.Error())
		return
	}
	plan.ID = plan.Name
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *roleResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var state roleModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	if err := r.client.exec(ctx, "DROP ROLE IF EXISTS "+ident(state.Name.ValueString())); err != nil {
		resp.Diagnostics.AddError("could not drop role "+state.Name.ValueString(), err.Error())
	}
}
