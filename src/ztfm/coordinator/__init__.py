"""The coordinator role (layer 6): rounds of select -> verify -> aggregate -> release -> audit."""
