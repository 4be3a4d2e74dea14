"""ztfm: zero-trust federated threat detection for IoT fleets."""

__version__ = "0.1.0"
