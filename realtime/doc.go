// Package realtime is the gateway that streams channel events to browsers and services
// over SSE and WebSocket. This slice holds its authorization and the SSE [Gateway].
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
//
// # Server-Sent Events protocol
//
// A client opens GET /?channel=a&channel=b (at most [GatewayConfig.MaxChannels]), optionally
// with after=N or a Last-Event-ID: N header (the header wins) to resume. Before any event is
// written, every channel is parsed and checked against the router (400 with the reason when
// one is malformed, names a scope its table does not have, or there are too many), the
// resume position is checked (400 when it is after the ledger head), and every channel is
// authorized (401 or 403 with the Decision's reason). Beyond MaxConnections streams, or
// during Shutdown, the answer is 503.
//
// The first message acknowledges the subscription:
//
//	id: P
//	event: subscribed
//	data: {"channels":["posts/42/comments","comments/7"],"position":P}
//
// channels are the canonical channels, duplicates removed. P is the position from which
// delivery is guaranteed: the resume position when one was given, otherwise the ledger
// head at subscription time. Every later matching event has a position above P and is
// delivered, so nothing between the acknowledgement and live delivery is lost.
//
// Each event is one message, in ledger order:
//
//	id: <ledger position>
//	event: insert|update|delete|truncate
//	data: {"channel":"<first subscribed channel it matched>","event":<event JSON>}
//
// An event matching several subscribed channels is sent once, naming the first of them in
// subscription order. A ": ping" comment line is written every [GatewayConfig.Heartbeat].
//
// # Resume
//
// A client that reconnects with Last-Event-ID (which a browser's EventSource sends by
// itself) or after=N receives exactly the events of its channels after N, then live events,
// with no gap and no duplicate. Once the ledger has retention, a position older than
// retention will be answered with a "resync" message telling the client to reload its
// state; the ledger keeps everything today, so that message is not sent yet.
//
// # Ending a stream
//
// The gateway ends a stream with a last message
//
//	event: error
//	data: {"reason":"...","position":N}
//
// where N is the position of the last event sent (or P): resume from it. Reasons are
// "token expired" (at the earliest Decision.Expires of the stream's channels), "shutdown"
// ([Gateway.Shutdown]) and "ledger error". A client that does not read for
// [GatewayConfig.WriteTimeout] is disconnected with reason "overflow": the gateway reads
// the ledger at most [GatewayConfig.Buffer] events ahead of the client, so a slow client
// never makes memory grow and never loses an event silently, but its connection is then
// too blocked to carry the message, so the reason and resume position are logged and
// counted in [Gateway.Stats] and the client resumes with its Last-Event-ID. Do not set an
// http.Server WriteTimeout on the server that hosts the gateway: it would cut every stream.
package realtime
