package pgwal

import (
	"errors"
	"testing"

	"github.com/walflow/walflow/ledger"
)

func TestCheckOrigin(t *testing.T) {
	t.Parallel()
	base := ledger.Origin{SystemID: "7300000000000000001", Timeline: 1, Database: "app", Slot: "walflow"}
	tests := []struct {
		name string
		have ledger.Origin
		want error
	}{
		{"first run", ledger.Origin{}, nil},
		{"same", base, nil},
		{"restored into another cluster", ledger.Origin{SystemID: "7300000000000000002", Timeline: 1, Database: "app", Slot: "walflow"}, ErrOriginChanged},
		{"promoted standby", ledger.Origin{SystemID: base.SystemID, Timeline: 2, Database: "app", Slot: "walflow"}, ErrOriginChanged},
		{"other database", ledger.Origin{SystemID: base.SystemID, Timeline: 1, Database: "shop", Slot: "walflow"}, ErrOriginChanged},
		{"other slot", ledger.Origin{SystemID: base.SystemID, Timeline: 1, Database: "app", Slot: "other"}, ErrOriginChanged},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if err := checkOrigin(tt.have, base); !errors.Is(err, tt.want) || (err == nil) != (tt.want == nil) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestCheckSlot(t *testing.T) {
	t.Parallel()
	followed := ledger.State{Head: 10, LastEndLSN: 500, AckedLSN: 800, Origin: ledger.Origin{SystemID: "1", Slot: "walflow"}}
	ok := SlotInfo{Name: "walflow", Plugin: "pgoutput", Database: "app", ConfirmedFlush: 700, WALStatus: "reserved"}
	tests := []struct {
		name       string
		info       SlotInfo
		exists     bool
		st         ledger.State
		wantCreate bool
		want       error
	}{
		{"new ledger, no slot", SlotInfo{Name: "walflow"}, false, ledger.State{}, true, nil},
		{"new ledger adopts slot", ok, true, ledger.State{}, false, nil},
		{"normal restart", ok, true, followed, false, nil},
		{"confirmed went back after a server crash", SlotInfo{Name: "walflow", Plugin: "pgoutput", Database: "app", ConfirmedFlush: 100}, true, followed, false, nil},
		{"slot dropped", SlotInfo{Name: "walflow"}, false, followed, false, ErrSlotMissing},
		{"slot recreated", SlotInfo{Name: "walflow", Plugin: "pgoutput", Database: "app", ConfirmedFlush: 801}, true, followed, false, ErrSlotRecreated},
		{"invalidated", SlotInfo{Name: "walflow", Plugin: "pgoutput", Database: "app", WALStatus: "lost"}, true, followed, false, ErrSlotInvalidated},
		{"in use", SlotInfo{Name: "walflow", Plugin: "pgoutput", Database: "app", Active: true, ActivePID: 42}, true, followed, false, ErrSlotInUse},
		{"other plugin", SlotInfo{Name: "walflow", Plugin: "wal2json", Database: "app"}, true, followed, false, ErrSlotConfig},
		{"other database", SlotInfo{Name: "walflow", Plugin: "pgoutput", Database: "shop"}, true, followed, false, ErrSlotConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			create, err := checkSlot(tt.info, tt.exists, "app", tt.st)
			if create != tt.wantCreate || !errors.Is(err, tt.want) || (err == nil) != (tt.want == nil) {
				t.Fatalf("got create=%v err=%v, want create=%v err=%v", create, err, tt.wantCreate, tt.want)
			}
		})
	}
}
