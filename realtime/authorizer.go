package realtime

import (
	"net/http"
	"time"

	"github.com/walflow/walflow/channel"
)

// Decision is the answer of an [Authorizer] for one subscription.
type Decision struct {
	// Allow is true when the subscription may start.
	Allow bool
	// Status is http.StatusUnauthorized (401) for a missing, invalid or expired token and
	// http.StatusForbidden (403) for a valid token that does not cover the channel (or for
	// a channel that is not valid). It is 0 when Allow is true.
	Status int
	// Reason is a short explanation, safe to send to the client and to log: it never
	// contains the token.
	Reason string
	// Expires is when the authorization ends (a token's exp); the gateway closes the stream
	// at that time. The zero time means no expiry.
	Expires time.Time
}

// Authorizer decides whether a request may subscribe to a channel.
//
// The gateway calls Authorize for every subscription before any data flows, including a
// stream resumed from a position, so a revoked or expired token cannot resume. Authorize
// must be safe for concurrent use, must not block on slow I/O without honouring
// r.Context(), and must not modify r.
type Authorizer interface {
	Authorize(r *http.Request, ch channel.Channel) Decision
}

// deny returns a denial.
func deny(status int, reason string) Decision {
	return Decision{Status: status, Reason: reason}
}

// Reasons of denials. They are constant so they can never contain a token.
const (
	reasonMissingToken    = "missing token"
	reasonTwoTokens       = "token given both in the Authorization header and in access_token"
	reasonTwoHeaders      = "Authorization header given more than once; send one"
	reasonTwoParams       = "access_token given more than once; send one"
	reasonBadScheme       = "Authorization header is not a Bearer token"
	reasonTooLarge        = "token too large"
	reasonMalformed       = "malformed token"
	reasonBadAlg          = "token algorithm not accepted"
	reasonBadSignature    = "invalid token signature"
	reasonUnknownKey      = "token signing key not known"
	reasonExpired         = "token expired"
	reasonNotYetValid     = "token not yet valid"
	reasonBadIssuer       = "token issuer not accepted"
	reasonBadAudience     = "token audience not accepted"
	reasonBadClaims       = "invalid token claims"
	reasonInvalidChannel  = "invalid channel"
	reasonNotCovered      = "token does not grant this channel"
	reasonAnonNotCovered  = "channel requires a token"
	reasonUnsupportedCrit = "token has unsupported critical header"
)
