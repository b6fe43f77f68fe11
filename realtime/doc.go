// Package realtime is the gateway that streams channel events to browsers and services
// over SSE and WebSocket. This slice holds its authorization.
//
// # Authorization
//
// Every subscription, including a resumed one, is checked by an [Authorizer] before any data
// flows. A denial carries an HTTP status (401 for a missing, invalid or expired token, 403
// for a valid token that does not cover the channel) and a short reason that never contains
// the token.
//
// [JWTAuthorizer] is the built-in Authorizer. It verifies HS256, RS256 or ES256 tokens with
// keys from [JWTConfig] and reads the channel patterns a token grants from one of its claims.
//
// # Tokens
//
// A client sends its token in the Authorization header (Authorization: Bearer <token>) or,
// because a browser's EventSource cannot set headers, in the access_token query parameter.
// A request that sends both is denied.
//
// # Patterns
//
// A pattern is written like a channel, with segments separated by slashes:
//
//	posts/*/comments             any post's comments
//	post_with_comments_counts/{sub}
//
// Patterns match the canonical parsed channel segment by segment, comparing decoded values,
// so posts/42/../43/comments (which does not parse) and posts/42%2F43/comments (one id,
// "42/43") can never reach another post. A * matches exactly one whole segment whose value
// has no slash; a segment that mixes * with other characters (post*) is invalid and matches
// nothing. {name} is replaced by the token's string claim name (e.g. {sub}) and compared as
// one literal segment, so a claim value of * or 42/comments never widens access.
//
// # Expiry
//
// [Decision.Expires] is the token's exp. The gateway closes the stream with a reason at that
// time, and a client that resumes must be authorized again.
package realtime
