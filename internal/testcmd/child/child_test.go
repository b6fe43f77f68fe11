package child

import "testing"

func TestStatusKiB(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"VmHWM", "VmRSS"} {
		kb, err := StatusKiB(name)
		if err != nil || kb <= 0 {
			t.Fatalf("StatusKiB(%s) = %d, %v", name, kb, err)
		}
	}
	if _, err := StatusKiB("NoSuchLine"); err == nil {
		t.Fatal("StatusKiB of a missing line succeeded")
	}
}
