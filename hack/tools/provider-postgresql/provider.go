package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/provider"
	"github.com/hashicorp/terraform-plugin-framework/provider/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

type pgProvider struct{ version string }

type providerModel struct {
	Host           types.String `tfsdk:"host"`
	Port           types.Int64  `tfsdk:"port"`
	Username       types.String `tfsdk:"username"`
	Password       types.String `tfsdk:"password"`
	Database       types.String `tfsdk:"database"`
	SSLMode        types.String `tfsdk:"sslmode"`
	ConnectTimeout types.Int64  `tfsdk:"connect_timeout"`
}

// client opens one short-lived connection per operation: runs are rare and short, and holding no
// pool means a restarted server is simply reconnected to.
type client struct{ config *pgx.ConnConfig }

func newProvider(version string) func() provider.Provider {
	return func() provider.Provider { return &pgProvider{version: version} }
}

func (p *pgProvider) Metadata(_ context.Context, _ provider.MetadataRequest, resp *provider.MetadataResponse) {
	resp.TypeName = "postgresql"
	resp.Version = p.version
}

func (p *pgProvider) Schema(_ context.Context, _ provider.SchemaRequest, resp *provider.SchemaResponse) {
	resp.Schema = schema.Schema{
		Description: "A PostgreSQL server. Every attribute defaults to libpq's environment variable.",
		Attributes: map[string]schema.Attribute{
			"host":            schema.StringAttribute{Optional: true, Description: "Server host (PGHOST)."},
			"port":            schema.Int64Attribute{Optional: true, Description: "Server port (PGPORT)."},
			"username":        schema.StringAttribute{Optional: true, Description: "Admin role (PGUSER)."},
			"password":        schema.StringAttribute{Optional: true, Sensitive: true, Description: "Its password (PGPASSWORD)."},
			"database":        schema.StringAttribute{Optional: true, Description: "Database to connect to (PGDATABASE, default postgres)."},
			"sslmode":         schema.StringAttribute{Optional: true, Description: "disable, prefer, require, verify-full (PGSSLMODE)."},
			"connect_timeout": schema.Int64Attribute{Optional: true, Description: "Seconds to wait for a connection (PGCONNECT_TIMEOUT, default 15)."},
		},
	}
}

func (p *pgProvider) Configure(ctx context.Context, req provider.ConfigureRequest, resp *provider.ConfigureResponse) {
	var cfg providerModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &cfg)...)
	if resp.Diagnostics.HasError() {
		return
	}
	// Only set attributes go into the connection string; pgx fills the rest from PG* variables.
	var parts []string
	add := func(key, value string) {
		parts = append(parts, key+"='"+strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(value)+"'")
	}
	if v := cfg.Host.ValueString(); v != "" {
		add("host", v)
	}
	if !cfg.Port.IsNull() {
		add("port", strconv.FormatInt(cfg.Port.ValueInt64(), 10))
	}
	if v := cfg.Username.ValueString(); v != "" {
		add("user", v)
	}
	if v := cfg.Password.ValueString(); v != "" {
		add("password", v)
	}
	if v := cfg.Database.ValueString(); v != "" {
		add("dbname", v)
	}
	if v := cfg.SSLMode.ValueString(); v != "" {
		add("sslmode", v)
	}
	if !cfg.ConnectTimeout.IsNull() {
		add("connect_timeout", strconv.FormatInt(cfg.ConnectTimeout.ValueInt64(), 10))
	}
	config, err := pgx.ParseConfig(strings.Join(parts, " "))
	if err != nil {
		// The parse error may quote the connection string: never echo it (it holds the password).
		resp.Diagnostics.AddError("invalid PostgreSQL connection settings", "check host, port, user and sslmode")
		return
	}
	if config.Database == "" {
		config.Database = "postgres"
	}
	if config.ConnectTimeout == 0 {
		config.ConnectTimeout = 15 * time.Second
	}
	c := &client{config: config}
	resp.ResourceData = c
	resp.DataSourceData = c
}

func (p *pgProvider) Resources(_ context.Context) []func() resource.Resource {
	return []func() resource.Resource{newRole, newDatabase}
}

func (p *pgProvider) DataSources(_ context.Context) []func() datasource.DataSource {
	return []func() datasource.DataSource{newServer}
}

// exec runs statements on a fresh connection, one at a time (CREATE DATABASE cannot run in a transaction).
func (c *client) exec(ctx context.Context, statements ...string) error {
	conn, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	for _, sql := range statements {
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("%s: %w", firstWords(sql), err)
		}
	}
	return nil
}

// inTransaction runs statements atomically (CREATE ROLE and its COMMENT: all or nothing).
func (c *client) inTransaction(ctx context.Context, statements ...string) error {
	conn, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	for _, sql := range statements {
		if _, err := tx.Exec(ctx, sql); err != nil {
			return fmt.Errorf("%s: %w", firstWords(sql), err)
		}
	}
	return tx.Commit(ctx)
}

// isCode tells whether err is a PostgreSQL error with that SQLSTATE.
func isCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

// queryString returns one text column of one row ("" when NULL or no row).
func (c *client) queryString(ctx context.Context, sql string, args ...any) (string, error) {
	conn, err := c.connect(ctx)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	var value *string
	if err := conn.QueryRow(ctx, sql, args...).Scan(&value); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return "", err
	}
	if value == nil {
		return "", nil
	}
	return *value, nil
}

func (c *client) connect(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, c.config.Copy())
	if err != nil {
		return nil, fmt.Errorf("could not connect to PostgreSQL at %s:%d: %w", c.config.Host, c.config.Port, err)
	}
	return conn, nil
}

// firstWords names a statement in an error without its literals (a password may follow).
func firstWords(sql string) string {
	words := strings.Fields(sql)
	if len(words) > 3 {
		words = words[:3]
	}
	return strings.Join(words, " ")
}

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

// literal quotes a string constant (standard_conforming_strings is on since PostgreSQL 9.1).
func literal(value string) string { return "'" + strings.ReplaceAll(value, "'", "''") + "'" }

func clientOf(data any, diags interface{ AddError(string, string) }) *client {
	if data == nil {
		return nil // not configured yet (validation); the framework calls Configure again
	}
	c, ok := data.(*client)
	if !ok {
		diags.AddError("unexpected provider data", fmt.Sprintf("%T", data))
		return nil
	}
	return c
}
