package boltstore

import (
	"bytes"
	"compress/flate"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"sync"
)

// From format 5 the ledger's records (the sessions, notifications and
// payment_intents buckets) are kept compressed: a value is one of
//
//	'{'…            JSON, as formats 1–4 wrote every record (still read;
//	                and written when compressing would not make it smaller)
//	tombstoneMark…  a pruned session (format 4; see encodeTombstone)
//	intentMark…     a PaymentIntent status (format 6; see encodeIntent)
//	deflateMark…    the record's JSON, DEFLATE-compressed (RFC 1951) with
//	                recordDict as the preset dictionary
//
// Most of a year's file is the last retention's records in full: kept
// action output, event bodies until they are delivered. Compressing each
// value on its own keeps a record one Get away and lets several share a
// 4 KiB page where one used to fill it. A record of a few hundred bytes
// gains little from DEFLATE alone; the dictionary (Stripe's event shapes
// and the records' own field names) is what makes those small too.
const deflateMark = 0x02

// recordDict is the preset dictionary of every deflateMark value ever
// written: changing one byte makes them unreadable, so it never changes (a
// test pins its hash). A better one is a new mark and a new format.
//
// It is the compacted JSON of testdata's checkout.session.expired and
// payment_intent.succeeded events (API version 2023-10-16, derived from
// stripe-mock's fixtures) followed by one record of each kind as
// encoding/json writes it.
//
//go:embed recorddict.v1
var recordDict []byte

var (
	deflaters = sync.Pool{New: func() any {
		w, err := flate.NewWriterDict(io.Discard, flate.DefaultCompression, recordDict)
		if err != nil {
			panic(err) // only for a level out of range
		}
		return w
	}}
	inflaters = sync.Pool{New: func() any { return flate.NewReaderDict(bytes.NewReader(nil), recordDict) }}
)

// encodeRecord is how a record of the ledger is kept: its JSON, compressed
// when that makes it smaller.
func encodeRecord(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	buf.Grow(len(raw)/2 + 16)
	buf.WriteByte(deflateMark)
	w := deflaters.Get().(*flate.Writer)
	defer deflaters.Put(w)
	w.Reset(&buf)
	if _, err := w.Write(raw); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	if buf.Len() >= len(raw) {
		return raw, nil
	}
	return buf.Bytes(), nil
}

// decodeRecord reads what encodeRecord wrote, or the plain JSON of an
// older format, into v.
func decodeRecord(raw []byte, v any) error {
	if len(raw) > 0 && raw[0] == deflateMark {
		r := inflaters.Get().(io.ReadCloser)
		defer inflaters.Put(r)
		if err := r.(flate.Resetter).Reset(bytes.NewReader(raw[1:]), recordDict); err != nil {
			return err
		}
		plain, err := io.ReadAll(r)
		if err != nil {
			return fmt.Errorf("inflate: %w", err)
		}
		raw = plain
	}
	return json.Unmarshal(raw, v)
}

// getRecord reads a ledger record into v; false when there is none.
func (t *Tx) getRecord(bucket, key []byte, v any) (bool, error) {
	raw := t.b(bucket).Get(key)
	if raw == nil {
		return false, nil
	}
	if err := decodeRecord(raw, v); err != nil {
		return false, fmt.Errorf("read %s/%s: %w", bucket, key, err)
	}
	return true, nil
}

// putRecord writes a ledger record as encodeRecord keeps it.
func (t *Tx) putRecord(bucket, key []byte, v any) error {
	raw, err := encodeRecord(v)
	if err != nil {
		return err
	}
	if err := t.b(bucket).Put(key, raw); err != nil {
		return fmt.Errorf("write %s/%s: %w", bucket, key, err)
	}
	return nil
}
