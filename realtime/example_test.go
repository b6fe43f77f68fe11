package realtime_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"time"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/realtime"
)

// A token whose channels claim grants the comments of any post and the user's own
// profile row. The gateway asks the authorizer about every subscription.
func ExampleJWTAuthorizer() {
	secret := []byte("a shared secret of at least 32 bytes!")
	auth, err := realtime.NewJWTAuthorizer(realtime.JWTConfig{HS256Secret: secret})
	if err != nil {
		log.Fatal(err)
	}
	token := signHS256(secret, map[string]any{
		"sub":      "17",
		"channels": []string{"posts/*/comments", "users/{sub}"},
		"exp":      time.Now().Add(time.Hour).Unix(),
	})
	r := httptest.NewRequest("GET", "/realtime/?channel=posts/42/comments", nil)
	r.Header.Set("Authorization", "Bearer "+token)
	for _, ch := range []string{"posts/42/comments", "users/17", "users/18", "posts"} {
		c, err := channel.Parse(ch)
		if err != nil {
			log.Fatal(err)
		}
		d := auth.Authorize(r, c)
		if d.Allow {
			fmt.Printf("%-18s allowed\n", ch)
			continue
		}
		fmt.Printf("%-18s %d %s\n", ch, d.Status, d.Reason)
	}
	// Output:
	// posts/42/comments  allowed
	// users/17           allowed
	// users/18           403 token does not grant this channel
	// posts              403 token does not grant this channel
}

// Serve the gateway and walflow.js from your own server, next to your application's
// routes. A page then subscribes with
//
//	import { Walflow } from "/realtime/walflow.js";
//
// (Compile-only: it needs a PostgreSQL server.)
func ExampleGateway() {
	eng, err := walflow.Open(context.Background(), walflow.Config{DatabaseURL: "postgres://app@localhost:5432/blog"})
	if err != nil {
		log.Fatal(err)
	}
	auth, err := realtime.NewJWTAuthorizer(realtime.JWTConfig{HS256Secret: []byte(os.Getenv("WALFLOW_JWT_SECRET"))})
	if err != nil {
		log.Fatal(err)
	}
	gw, err := eng.Gateway(realtime.GatewayConfig{
		Authorizer:     auth,
		AllowedOrigins: []string{"https://app.example.com"},
	})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/realtime/", http.StripPrefix("/realtime", gw))
	// Do not set WriteTimeout: streams are long-lived; the gateway bounds each write.
	srv := &http.Server{Addr: "127.0.0.1:8080", Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}

// signHS256 makes an HS256 JWT.
func signHS256(secret []byte, claims map[string]any) string {
	enc := base64.RawURLEncoding
	body, _ := json.Marshal(claims)
	msg := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString(body)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(msg))
	return msg + "." + enc.EncodeToString(mac.Sum(nil))
}
