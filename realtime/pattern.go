package realtime

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/walflow/walflow/channel"
)

// segmentKind is the kind of one pattern segment.
type segmentKind uint8

const (
	segLiteral  segmentKind = iota + 1 // equal to one decoded segment
	segWildcard                        // *: any one segment without a slash
)

type patternSegment struct {
	kind  segmentKind
	value string // decoded, for segLiteral
}

// pattern is a parsed channel pattern, with placeholders already replaced.
type pattern []patternSegment

// errPlaceholder is returned by parsePattern for a {name} whose claim is missing.
var errPlaceholder = errors.New("placeholder claim missing, empty or not a string")

// parsePattern parses a pattern. claims gives the values of {name} placeholders; with nil
// claims any placeholder is an error.
func parsePattern(s string, claims map[string]any) (pattern, error) {
	if s == "" {
		return nil, errors.New("empty pattern")
	}
	n := strings.Count(s, "/") + 1
	if n > 2*channel.MaxScopes+1 {
		return nil, fmt.Errorf("pattern has %d segments, more than a channel can have", n)
	}
	segs := strings.Split(s, "/")
	p := make(pattern, 0, len(segs))
	for i, seg := range segs {
		switch {
		case seg == "":
			return nil, fmt.Errorf("segment %d is empty", i+1)
		case seg == "*":
			p = append(p, patternSegment{kind: segWildcard})
			continue
		case strings.Contains(seg, "*"):
			return nil, fmt.Errorf("segment %d mixes * with other characters; * must be a whole segment", i+1)
		case strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}") && len(seg) > 2:
			name := seg[1 : len(seg)-1]
			if strings.ContainsAny(name, "{}") {
				return nil, fmt.Errorf("segment %d is not a valid placeholder", i+1)
			}
			v, ok := claims[name].(string)
			if !ok || v == "" {
				return nil, fmt.Errorf("segment %d {%s}: %w", i+1, name, errPlaceholder)
			}
			// The claim value is one literal segment, never re-parsed: * or a slash in it
			// cannot widen the pattern.
			p = append(p, patternSegment{kind: segLiteral, value: v})
			continue
		case strings.ContainsAny(seg, "{}"):
			return nil, fmt.Errorf("segment %d has a brace outside a {name} placeholder", i+1)
		}
		dec, err := url.PathUnescape(seg)
		if err != nil {
			return nil, fmt.Errorf("segment %d has an invalid percent escape", i+1)
		}
		if dec == "" || dec == "." || dec == ".." {
			return nil, fmt.Errorf("segment %d is a relative path element", i+1)
		}
		p = append(p, patternSegment{kind: segLiteral, value: dec})
	}
	return p, nil
}

// channelSegments returns the decoded segments of a channel in written order.
func channelSegments(ch channel.Channel) []string {
	segs := make([]string, 0, 2*len(ch.Scopes)+2)
	for _, s := range ch.Scopes {
		segs = append(segs, s.Table, s.ID)
	}
	segs = append(segs, ch.Table)
	if ch.ID != "" {
		segs = append(segs, ch.ID)
	}
	return segs
}

// match reports whether the pattern covers the channel segments.
func (p pattern) match(segs []string) bool {
	if len(p) != len(segs) {
		return false
	}
	for i, ps := range p {
		switch ps.kind {
		case segWildcard:
			// A wildcard is one whole segment and never spans an (encoded) slash.
			if strings.Contains(segs[i], "/") {
				return false
			}
		case segLiteral:
			if ps.value != segs[i] {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// matchAny reports whether any pattern covers the channel segments.
func matchAny(ps []pattern, segs []string) bool {
	for _, p := range ps {
		if p.match(segs) {
			return true
		}
	}
	return false
}
