"""Transports (layer 5): move encoded round messages between the roles.

``inproc`` drives a whole fleet inside one process (simulation); the gRPC transport carries the
same bytes over mutual TLS: ``gate`` (the zero-trust pipeline every request passes),
``grpc_server`` (``FleetServer``, ``EnrollmentServer``), ``grpc_client`` (``FleetClient``,
``enroll``) and ``grpc_fleet`` (``LocalFleet`` wiring). Import those modules directly; this
package imports nothing, so the in-process transport does not load gRPC. Roles are reached
through small protocols, so neither transport imports the role packages above it.
"""
