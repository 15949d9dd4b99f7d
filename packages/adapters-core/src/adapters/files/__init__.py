"""File primitives under every layer that writes or reads: atomic folder swaps, weights files, JSON.

Nothing here knows adapters: ``atomic`` swaps a whole folder in one rename, ``scratch`` tidies
what a crash left, ``weights`` reads and writes safetensors and legacy pickles (bounded, with
integrity records from ``integrity``), ``jsonfile`` reads small JSON files defensively, ``paths``
keeps names inside the folder the user gave, ``format`` holds the reference format's file names.
"""
