// A Go web app for Skiff: a plain net/http handler, served through net/http/cgi.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cgi"
	"os"
	"runtime"
	"strings"
)

const greeting = "Hello from Go on Skiff!"

func main() {
	mux := http.NewServeMux()

	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, greeting)
	})

	mux.HandleFunc("GET /env/{name}", func(w http.ResponseWriter, r *http.Request) {
		value, ok := os.LookupEnv(r.PathValue("name"))
		if !ok {
			http.Error(w, "not set", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, value)
	})

	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
		if _, err := io.Copy(w, r.Body); err != nil {
			fmt.Fprintln(os.Stderr, "echo:", err)
		}
	})

	mux.HandleFunc("GET /json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"app":     os.Getenv("SKIFF_APP"),
			"dyno":    os.Getenv("DYNO"),
			"go":      runtime.Version(),
			"method":  r.Method,
			"path":    r.URL.Path,
			"agent":   r.UserAgent(),
			"release": os.Getenv("SKIFF_RELEASE_VERSION"),
			"query":   strings.TrimSpace(r.URL.RawQuery),
		})
	})

	if err := cgi.Serve(mux); err != nil {
		fmt.Fprintln(os.Stderr, "cgi:", err)
		os.Exit(1)
	}
}
