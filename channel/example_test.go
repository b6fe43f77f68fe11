package channel_test

import (
	"fmt"

	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
)

func Example() {
	post, err := channel.ParseScope("posts/{post_id}")
	if err != nil {
		panic(err)
	}
	r, err := channel.NewRouter([]channel.Table{{Name: "comments", Scopes: []channel.Scope{post}}})
	if err != nil {
		panic(err)
	}

	// A comment moved from post 42 to post 43: both posts' subscribers hear of it.
	e := &event.Event{
		Name: "comments",
		Type: event.Update,
		NewRecord: event.Record{
			{Name: "id", Value: event.Text(23, "7")},
			{Name: "post_id", Value: event.Text(23, "43")},
		},
		OldRecord: event.Record{
			{Name: "id", Value: event.Text(23, "7")},
			{Name: "post_id", Value: event.Text(23, "42")},
		},
	}
	for _, c := range r.Channels(e, nil) {
		fmt.Println(c)
	}

	c, err := channel.Parse("posts/42/comments")
	if err != nil {
		panic(err)
	}
	fmt.Println(c.Kind(), c.Table, c.Scopes, r.Check(c) == nil)
	fmt.Println(r.Check(channel.MustParse("users/1/comments")))
	// Output:
	// comments
	// comments/7
	// posts/43/comments
	// posts/42/comments
	// scoped comments [{posts 42}] true
	// channel: channel "users/1/comments": table "comments" has no scope users/{…}; its scopes are posts/{post_id}, so use a channel like posts/1/comments, or configure the scope for the table
}

func ExampleParse() {
	c, err := channel.Parse("comments/a%2Fb")
	fmt.Printf("%v %q %q %v\n", c.Kind(), c.ID, c.String(), err)

	_, err = channel.Parse("posts/42/comments/7")
	fmt.Println(err)
	// Output:
	// direct "a/b" "comments/a%2Fb" <nil>
	// channel: invalid channel "posts/42/comments/7": it has 4 segments, but a channel has 1 (table), 2 (table/id) or an odd number (parent/id/.../table); to follow one row use comments/7; use table, table/id or parent/id/table, e.g. comments, comments/7 or posts/42/comments
}
