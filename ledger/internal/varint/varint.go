// Package varint reads the varint-encoded bookkeeping records of the ledger backends.
package varint

import "encoding/binary"

// Decoder reads varints and length-prefixed strings from B, remembering the first
// failure in Bad; every read after a failure returns a zero value.
type Decoder struct {
	B   []byte
	Bad bool
}

// Uvarint reads an unsigned varint.
func (d *Decoder) Uvarint() uint64 {
	v, n := binary.Uvarint(d.B)
	if n <= 0 {
		d.Bad = true
		return 0
	}
	d.B = d.B[n:]
	return v
}

// Varint reads a signed varint.
func (d *Decoder) Varint() int64 {
	v, n := binary.Varint(d.B)
	if n <= 0 {
		d.Bad = true
		return 0
	}
	d.B = d.B[n:]
	return v
}

// String reads a string prefixed with its length as an unsigned varint.
func (d *Decoder) String() string {
	n := d.Uvarint()
	if d.Bad || n > uint64(len(d.B)) {
		d.Bad = true
		return ""
	}
	s := string(d.B[:n])
	d.B = d.B[n:]
	return s
}
