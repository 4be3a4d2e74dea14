"""Federated learning core (layer 3): messages, their wire codec, strategies and round state.

Pure: nothing here touches the network, the clock or a global RNG. The roles that use it live in
``ztfm.device`` and ``ztfm.coordinator``; transports in ``ztfm.transport`` move the encoded
messages, so the same roles run in process (simulation) and over mTLS gRPC.
"""
