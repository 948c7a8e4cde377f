"""Data: the canonical HDF5 format, importers, and torch datasets over it."""
