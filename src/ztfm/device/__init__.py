"""The device agent (layer 6): measure -> detect -> learn -> protect -> send."""
