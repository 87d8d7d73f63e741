// Command demo-app serves HTTP (the service golden path's example workload, and the local node's test
// server) and fetches URLs (the tests' in-cluster client). Standard library only, built static.
//
//	demo-app serve [-listen :8080] [-message text]   GET / answers the message, /healthz ok, /env the pod's identity
//	demo-app fetch [-insecure] [-bearer-file f] URL  prints the body; exit 1 unless the status is 2xx
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", ":8080", "address to listen on")
	message := fs.String("message", envOr("DEMO_MESSAGE", "hello from blacktop"), "what GET / answers")
	_ = fs.Parse(args)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, *message)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/env", func(w http.ResponseWriter, r *http.Request) {
		host, _ := os.Hostname()
		fmt.Fprintf(w, "hostname=%s\nnamespace=%s\n", host, os.Getenv("POD_NAMESPACE"))
	})
	server := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	fmt.Fprintf(os.Stderr, "demo-app listening on %s\n", *listen)
	return server.ListenAndServe()
}

func fetch(args []string) error {
	fs := flag.NewFlagSet("fetch", flag.ExitOnError)
	insecure := fs.Bool("insecure", false, "skip TLS verification")
	bearerFile := fs.String("bearer-file", "", "send the token in this file as a bearer token")
	timeout := fs.Duration("timeout", 10*time.Second, "give up after this long")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("usage: demo-app fetch [-insecure] [-bearer-file f] URL")
	}
	client := &http.Client{Timeout: *timeout}
	if *insecure {
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // test client
	}
	req, err := http.NewRequest(http.MethodGet, fs.Arg(0), nil)
	if err != nil {
		return err
	}
	if *bearerFile != "" {
		token, err := os.ReadFile(*bearerFile)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	fmt.Printf("%s", body)
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%s: %s", fs.Arg(0), resp.Status)
	}
	return nil
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: demo-app serve|fetch ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "fetch":
		err = fetch(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q (serve, fetch)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo-app:", err)
		os.Exit(1)
	}
}
