// Package channel names what a walflow subscriber wants to receive and decides which
// channels every event belongs to.
//
// # Channels
//
// A channel is a REST-like path. The number of its segments decides its [Kind]:
//
//	comments                           unscoped: every change of table comments
//	comments/7                         direct: changes of the comments row whose id is 7
//	posts/42/comments                  scoped: comments whose post_id is 42
//	organizations/1/posts/42/comments  scoped: comments whose org_id is 1 and post_id is 42
//
// One segment is unscoped, two are direct, and an odd number from three on is scoped: one
// parent/id pair per scope field, outermost first, followed by the table. An even number of
// segments from four on is not a channel. Table segments are names: [A-Za-z_][A-Za-z0-9_$]*,
// optionally schema-qualified (public.comments), at most 63 bytes each as in PostgreSQL. Id
// segments are arbitrary text, percent-escaped where needed, except that they may not be
// empty, whitespace only, "." or "..", contain control characters or be invalid UTF-8. A
// scoped channel has at most [MaxScopes] parents.
//
// [Parse] reads a channel and [Channel.String] writes its canonical form, in which every
// segment is escaped with [url.PathEscape]: an id containing a slash (comments/a%2Fb) cannot
// change the structure of the channel. Parse accepts any escaping; String always writes the
// same one, so two spellings of one channel have one canonical form.
//
// # Scopes and tables
//
// A table's scopes say which scoped channels its events go to. A [Scope] is an ordered list of
// (column → parent table) fields, written as a template: "posts/{post_id}" makes
// posts/42/comments the channel of the comments whose post_id is 42, and
// "organizations/{org_id}/posts/{post_id}" makes organizations/1/posts/42/comments the one of
// the comments whose org_id is 1 and post_id is 42. A [Table] names its id column (default
// [IDColumnDefault]), its scopes and its timestamp column (default [TimestampColumnDefault]).
// A table that is not configured has the defaults and no scopes.
//
// # Routing
//
// A [Router] holds the table configuration. [Router.Channels] gives the channels an event
// belongs to, which are the keys the ledger indexes it under (r.Channels has the signature of
// a ledger.Indexer):
//
//   - the unscoped channel of the event's table, always;
//   - the direct channel of the id in the new record and of the id in the old record, both
//     when an update changed the id; none for an id that is NULL, absent or an unchanged
//     TOAST value;
//   - for every configured scope, in configuration order, the scoped channel of the new
//     record's scope values and of the old record's, both when an update moved the row from
//     one parent to another; a scope yields nothing for a record that lacks one of its
//     columns or has it NULL;
//   - for a truncate, only the unscoped channel.
//
// The result has no duplicates and a fixed order: unscoped, direct (new, then old), then
// scoped in configuration order (new, then old). A value that cannot be an id segment (see
// above) gives no channel, so every channel Channels returns for a table with a valid name is
// one [Parse] accepts and [Channel.String] reproduces.
//
// [Router.Check] tells a subscriber whether a channel can ever receive events: a scoped
// channel must follow one of its table's configured scopes.
//
// A router made with [Router.WithLogger] (walflow's engine makes one) also warns when a
// configured table's events stop carrying a column one of its scopes names, typically
// after ALTER TABLE ... RENAME COLUMN: that scope's channels then receive none of the
// table's events until the scope follows the new name. It warns once per change of the
// table's columns (event.Source.Columns), not once per event, naming the table, the scope
// and the column.
package channel
