"""Edge adapters: one module per surface, each turning its wire format into an AccessRequest and a
Decision back into its wire format.  Edges never import each other; what they share is in _http."""
