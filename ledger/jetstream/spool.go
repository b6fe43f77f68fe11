package jetstream

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// spool holds the open transaction's encoded events until CommitTx: in memory up to a
// limit, then in a temporary file.
type spool struct {
	dir   string
	limit int
	mem   []byte // length-prefixed records
	file  *os.File
	bw    *bufio.Writer
	n     int // records
}

func (s *spool) reset() error {
	s.mem = s.mem[:0]
	s.n = 0
	if s.file != nil {
		s.bw = nil
		if err := s.file.Truncate(0); err != nil {
			return fmt.Errorf("ledger/jetstream: truncate the transaction spool %s: %w", s.file.Name(), err)
		}
		if _, err := s.file.Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("ledger/jetstream: rewind the transaction spool %s: %w", s.file.Name(), err)
		}
	}
	return nil
}

// add appends a record.
func (s *spool) add(rec []byte) error {
	s.n++
	if s.bw == nil && len(s.mem)+len(rec)+binary.MaxVarintLen64 <= s.limit {
		s.mem = binary.AppendUvarint(s.mem, uint64(len(rec)))
		s.mem = append(s.mem, rec...)
		return nil
	}
	if s.bw == nil {
		if s.file == nil {
			f, err := os.CreateTemp(s.dir, "walflow-tx-*.spool")
			if err != nil {
				return fmt.Errorf("ledger/jetstream: create a transaction spool file in %s (set Options.SpoolDir to a writable directory): %w", s.dir, err)
			}
			s.file = f
		}
		s.bw = bufio.NewWriterSize(s.file, 1<<20)
	}
	var hdr [binary.MaxVarintLen64]byte
	if _, err := s.bw.Write(hdr[:binary.PutUvarint(hdr[:], uint64(len(rec)))]); err != nil {
		return fmt.Errorf("ledger/jetstream: write the transaction spool %s: %w", s.file.Name(), err)
	}
	if _, err := s.bw.Write(rec); err != nil {
		return fmt.Errorf("ledger/jetstream: write the transaction spool %s: %w", s.file.Name(), err)
	}
	return nil
}

// each calls fn with every record, in order; rec is valid during the call only.
func (s *spool) each(fn func(i int, rec []byte) error) error {
	i := 0
	for b := s.mem; len(b) > 0; i++ {
		n, k := binary.Uvarint(b)
		if err := fn(i, b[k:k+int(n)]); err != nil {
			return err
		}
		b = b[k+int(n):]
	}
	if s.bw == nil {
		return nil
	}
	if err := s.bw.Flush(); err != nil {
		return fmt.Errorf("ledger/jetstream: write the transaction spool %s: %w", s.file.Name(), err)
	}
	if _, err := s.file.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("ledger/jetstream: rewind the transaction spool %s: %w", s.file.Name(), err)
	}
	br := bufio.NewReaderSize(s.file, 1<<20)
	var rec []byte
	for ; i < s.n; i++ {
		n, err := binary.ReadUvarint(br)
		if err != nil {
			return fmt.Errorf("ledger/jetstream: read the transaction spool %s: %w", s.file.Name(), err)
		}
		if cap(rec) < int(n) {
			rec = make([]byte, n)
		}
		rec = rec[:n]
		if _, err := io.ReadFull(br, rec); err != nil {
			return fmt.Errorf("ledger/jetstream: read the transaction spool %s: %w", s.file.Name(), err)
		}
		if err := fn(i, rec); err != nil {
			return err
		}
	}
	return nil
}

// close removes the spool file.
func (s *spool) close() {
	if s.file != nil {
		name := s.file.Name()
		err := s.file.Close()
		err = errors.Join(err, os.Remove(name))
		_ = err // a leftover temporary file is harmless
		s.file, s.bw = nil, nil
	}
}
