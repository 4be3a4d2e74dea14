"""Loaders for real IoT data: sensor CSVs, flow logs and packet captures (layer 1).

Every loader validates its schema and raises ``DataError`` with one clear line on a missing
column, wrong type, empty file, corrupt gzip or truncated capture.
"""
