"""Transports (layer 5): move encoded round messages between the roles.

``inproc`` drives a whole fleet inside one process (simulation); the gRPC transport carries the
same bytes over mutual TLS. Roles are reached through small protocols, so neither transport
imports the role packages above it.
"""
