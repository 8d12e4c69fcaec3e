package boltstore

// CollideIndex makes every session id hash alike in session_index until
// the returned function undoes it: the contract suite then runs with every
// settled session behind one index entry.
func CollideIndex() (undo func()) {
	was := indexHash
	indexHash = func(string) uint64 { return 42 }
	return func() { indexHash = was }
}
