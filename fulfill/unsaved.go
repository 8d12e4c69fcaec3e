package fulfill

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/fulfilld/fulfilld/internal/storehealth"
)

// unsaved keeps the results of attempts whose action ran but whose result
// the store refused to record (a full disk, an I/O error). Such a result
// stays in memory, under the item's id, until a write succeeds: meanwhile
// this process never attempts the item again — its action already ran —
// and a later trigger saves the kept result first, then goes on as it would
// after that result (nothing more for a success).
// Only a process that ends with results kept repeats them on its next start,
// as after a crash, with the same idempotency key.
type unsaved struct {
	mu    sync.Mutex
	saves map[string]keptSave
	gen   uint64
}

// keptSave is a kept result's save; gen tells it from one kept later for
// the same id; saving is open while a flushOne runs it, and closed when
// that ends.
type keptSave struct {
	save   func() error
	gen    uint64
	saving chan struct{}
}

// Bounds of the first, in-line retries of a result save: a store that
// recovers within about a second loses nothing and keeps nothing.
const (
	resultSaveTries = 6
	resultSaveWait  = 25 * time.Millisecond
)

// save records a result through save, retrying in line while the store
// refuses writes; after that, or when ctx ends, it keeps the result for
// flush. Errors other than a refused write are returned as they are.
func (u *unsaved) save(ctx context.Context, id string, save func() error) error {
	wait := resultSaveWait
	for try := 1; ; try++ {
		err := save()
		if err == nil || !errors.Is(err, storehealth.ErrUnwritable) {
			return err
		}
		if try >= resultSaveTries || sleepCtx(ctx, wait) != nil {
			u.mu.Lock()
			if u.saves == nil {
				u.saves = map[string]keptSave{}
			}
			u.gen++
			// A save of an earlier result for id still under way stays
			// marked: no other caller saves this one beside it.
			u.saves[id] = keptSave{save: save, gen: u.gen, saving: u.saves[id].saving}
			u.mu.Unlock()
			return fmt.Errorf("%s: the attempt ended but its result could not be recorded; "+
				"it is kept in memory and saved when the store takes writes again: %w", id, err)
		}
		wait *= 2
	}
}

// flushOne saves id's kept result, if there is one; found says whether
// there was. Only the result it saved leaves memory: one kept for id while
// it saved (a later attempt's, whose result the store refused in turn)
// stays until it is saved itself.
func (u *unsaved) flushOne(id string) (found bool, err error) {
	u.mu.Lock()
	k, ok := u.saves[id]
	if ok && k.saving != nil {
		// Another caller (the worker's flush, an attempt holding the
		// claim) is saving it: until that ends it is not recorded, and
		// saving it twice could land it after what comes next.
		u.mu.Unlock()
		return true, fmt.Errorf("%s: %w", id, errBeingRecorded)
	}
	if !ok {
		u.mu.Unlock()
		return false, nil
	}
	saving := make(chan struct{})
	k.saving = saving
	u.saves[id] = k
	u.mu.Unlock()
	defer u.doneSaving(id, saving)
	if err := k.save(); err != nil {
		if errors.Is(err, ErrClaimLost) {
			// Another instance took the item over while this one could
			// not write: its record stands, and this result never will.
			u.drop(id, k.gen)
			return true, fmt.Errorf("%s: its last attempt's result is dropped: %w", id, err)
		}
		return true, fmt.Errorf("%s: its last attempt's result is not recorded yet: %w", id, err)
	}
	u.drop(id, k.gen)
	return true, nil
}

// doneSaving ends the save that saving marks: whatever entry id has now
// (the one saved, or a later one kept meanwhile) is no longer being saved,
// and those waiting for it look again. Only the caller that made saving
// closes it.
func (u *unsaved) doneSaving(id string, saving chan struct{}) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if cur, ok := u.saves[id]; ok && cur.saving == saving {
		cur.saving = nil
		u.saves[id] = cur
	}
	close(saving)
}

// errBeingRecorded: another caller is saving the kept result right now.
var errBeingRecorded = errors.New("its last attempt's result is being recorded")

// drop forgets id's kept result if it is still the one of generation gen.
func (u *unsaved) drop(id string, gen uint64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if cur, ok := u.saves[id]; ok && cur.gen == gen {
		delete(u.saves, id)
	}
}

// flush saves every kept result it can, and says which it could not: one
// that cannot be saved does not keep the others in memory (at shutdown,
// a result left unsaved is repeated on the next start). One another caller
// is saving is waited for and looked at again. One dropped because another
// instance took its item over is not an error here: it is settled.
func (u *unsaved) flush() error {
	u.mu.Lock()
	ids := make([]string, 0, len(u.saves))
	for id := range u.saves {
		ids = append(ids, id)
	}
	u.mu.Unlock()
	var errs []error
	for _, id := range ids {
		for {
			_, err := u.flushOne(id)
			if errors.Is(err, errBeingRecorded) {
				u.waitSaved(id)
				continue
			}
			if err != nil && !errors.Is(err, ErrClaimLost) {
				errs = append(errs, err)
			}
			break
		}
	}
	return errors.Join(errs...)
}

// waitSaved waits until no caller is saving id's kept result.
func (u *unsaved) waitSaved(id string) {
	u.mu.Lock()
	k, ok := u.saves[id]
	u.mu.Unlock()
	if ok && k.saving != nil {
		<-k.saving
	}
}

// len is how many results are kept.
func (u *unsaved) len() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.saves)
}

// sleepCtx waits for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
