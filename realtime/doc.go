// Package realtime is the gateway that streams channel events to browsers and services
// over Server-Sent Events and WebSocket, with resume, authorization and limits, and serves
// the browser client walflow.js.
//
// # Mounting
//
// A [Gateway] is an http.Handler. Mount it under a prefix of your own server, e.g.
//
//	mux.Handle("/realtime/", http.StripPrefix("/realtime", gw))
//
// It answers, at any path under its mount:
//
//	GET .../walflow.js                the browser client, a dependency-free ES module
//	GET .../snapshot?channel=C        the rows of channel C and a resume token
//	GET with a WebSocket upgrade      the WebSocket protocol below
//	GET (anything else)               a Server-Sent Events stream
//
// # Authorization
//
// Every subscription, including a resumed one, is checked by an [Authorizer] before any data
// flows. A denial carries an HTTP status (401 for a missing, invalid or expired token, 403
// for a valid token that does not cover the channel) and a short reason that never contains
// the token.
//
// [JWTAuthorizer] is the built-in Authorizer. It verifies HS256, RS256 or ES256 tokens with
// keys from [JWTConfig] (PEM keys, or JWKS URLs whose keys it fetches again as they rotate)
// and reads the channel patterns a token grants from one of its claims.
//
// # Tokens
//
// A client sends its token in the Authorization header (Authorization: Bearer <token>) or,
// because a browser's EventSource cannot set headers, in the access_token query parameter.
// A request that sends both, or either of them twice, is denied with a reason saying which.
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
// written, in this order: every channel is parsed (400 when one is malformed or there are
// too many), every channel is authorized (401 or 403 with the Decision's reason), the
// channels are checked against the router (400 when one names a scope its table does not
// have), and the resume position is checked (400 when it is not a position). Authorization
// comes before the checks that answer from the configuration or the ledger, so a client
// that may not subscribe learns neither the tables' scopes nor the head. Beyond
// MaxConnections streams, or during Shutdown, the answer is 503.
//
// On a shared ledger ([GatewayConfig.SharedLedger], a cluster), a resume position after the
// ledger's head is waited for, up to [GatewayConfig.ResumeWait]: each node reads the shared stream a little
// apart from the others, and a client may resume on a node that has not yet read the
// position another node sent it. The stream opens once the head reaches the position;
// when it does not within ResumeWait, the answer is 503 with Retry-After, and the client
// retries with the same position. A request waiting holds one of the MaxConnections.
// Without SharedLedger such a position names events the ledger never had, and is
// refused at once with 400.
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
// [GatewayConfig.WriteTimeout] is disconnected with reason "overflow": at most
// [GatewayConfig.Buffer] live events wait for a client, and a client further behind reads
// its backlog from the ledger a batch at a time, so a slow client never makes memory grow
// and never loses an event silently, but its connection is then too blocked to carry the
// message, so the reason and resume position are logged and counted in [Gateway.Stats]
// and the client resumes with its Last-Event-ID. The logged position is a safe lower
// bound: part of the last write may have reached the client.
//
// # Fan-out
//
// One reader follows the ledger's head for all the gateway's streams, renders each event
// once per channel and protocol, and queues the shared bytes on the streams subscribed to
// it; a stream writes everything queued in one write. A stream that resumes from an older
// position, or falls more than Buffer events behind, reads its channels from the ledger on
// its own until it has caught up, then joins the shared reader again. Do not set an
// http.Server WriteTimeout on the server that hosts the gateway: it would cut every stream.
//
// # Snapshots
//
// GET .../snapshot?channel=C[&limit=N][&cursor=X] answers a page of channel C's current
// rows, read from PostgreSQL in one REPEATABLE READ snapshot ([GatewayConfig.Snapshots];
// see package snapshot for the guarantee):
//
//	{"channel":"posts/42/comments","rows":[{...},...],"token":"s1....","next":"X"}
//
// Rows look like an event's new_record, in primary key order; next, when present, is the
// cursor of the next page, read from the same snapshot (all pages carry the same token).
// The request is authorized exactly like a subscription to C, before anything else (401 or
// 403 with the reason); then C is checked against the router (400), as are limit (1 to
// 10000, default 1000) and cursor (400). A cursor whose snapshot has been released answers
// 410 (load again from the first page); too many paged loads at once answer 503 with
// Retry-After.
//
// Subscribe from the token to receive exactly the changes the rows do not contain: SSE
// with snapshot=<token> (one channel per stream) and WebSocket with "snapshot":"<token>" in
// the subscribe message. A resume position given with it (Last-Event-ID, after) is honoured
// when it is later than the token's; keep sending the token when resuming.
//
// # WebSocket protocol
//
// A WebSocket upgrade whose Origin header is not allowed ([GatewayConfig.AllowedOrigins];
// same-host origins and requests without Origin are always allowed) is refused with 403
// before the upgrade. The token, if any, is sent as for SSE (Authorization header or
// access_token parameter) and can be replaced later with an auth message. Every message is a
// JSON object in a text frame with a "type"; ref is an optional string the client chooses,
// echoed in the reply.
//
// Client to gateway:
//
//	{"type":"subscribe","channel":"posts/42/comments","after":123,"ref":"1"}
//	{"type":"subscribe","channel":"posts/42/comments","snapshot":"s1....","ref":"4"}
//	{"type":"unsubscribe","channel":"posts/42/comments","ref":"2"}
//	{"type":"auth","token":"<JWT>","ref":"3"}
//
// after is optional (a resume position, as Last-Event-ID for SSE). auth replaces the
// connection's token: every current subscription is authorized again with it, those it no
// longer allows end with an unsubscribed message carrying the reason, and the expiry
// becomes the new token's.
//
// Gateway to client:
//
//	{"type":"subscribed","ref":"1","channel":"posts/42/comments","position":P}
//	{"type":"event","channel":"posts/42/comments","position":N,"event":<event JSON>}
//	{"type":"resync","ref":"1","channel":"posts/42/comments","position":P,"reason":"..."}
//	{"type":"unsubscribed","ref":"2","channel":"posts/42/comments","position":N,"reason":""}
//	{"type":"authorized","ref":"3"}
//	{"type":"error","ref":"1","channel":"posts/42/comments","status":403,"reason":"..."}
//	{"type":"heartbeat","position":H}
//
// subscribed and resync mean what they mean for SSE, per channel. Each subscription is
// delivered in ledger order and resumes on its own, so an event matching two subscribed
// channels is sent once for each. error refuses one request (status as HTTP: 400 for a bad
// message or channel, too many channels or a duplicate subscription, 401/403 for a denial,
// 503 for a resume position the ledger's head did not reach within ResumeWait: subscribe
// again later) and leaves the connection and the other subscriptions alone. A subscribe is
// authorized before its channel is checked against the router and its after against the
// ledger, as for SSE. A subscribe whose resume position (after or its snapshot token) is
// after the head of a shared ledger waits for it as for SSE, while the connection's other messages
// and subscriptions go on; it is answered once the head reaches the position (or is
// refused with 503 after ResumeWait). Unsubscribing from the channel meanwhile drops it
// unanswered. heartbeat is sent every [GatewayConfig.Heartbeat], with the ledger head once the
// connection has a subscription (without position before: the connection itself is not
// authorized).
//
// The gateway closes a connection with these codes and the reason as close reason:
//
//	1000  the client closed it
//	1001  "shutdown" (Gateway.Shutdown)
//	1003  a binary message was sent
//	1009  a message over 64 KiB was sent
//	1011  "ledger error"
//	4001  "token expired" (refresh it with an auth message before exp)
//
// A client that does not read for [GatewayConfig.WriteTimeout] is disconnected without a
// close frame (its connection is too blocked to carry one; the browser reports 1006) and
// the disconnect is logged and counted with reason "overflow". At most about
// [GatewayConfig.Buffer] live events wait for a connection, however many channels it has.
// A client resumes each channel from the position of the last event it received on it.
package realtime
