"""Secure aggregation (SecAgg+, Bell et al. CCS 2020): pure, transport-agnostic state machines.

Typical use, one round:
    params = SecAggParams.create(round_id=..., session=..., devices=..., length=d,
                                 server_key=server_kex.public)
    server = SecAggServer(params, identities, server_kex)
    client = SecAggClient(params, device_id, signing_key, identities, SystemRandomSource())
    advertise -> receive_adverts -> share_keys -> receive_shares -> mask_input ->
    receive_masked -> sign_survivors -> receive_survivor_signatures -> unmask -> finalize
``run_secagg`` / ``simulate_round`` run all of that in one process.
"""

from ztfm.secagg.client import ClientPhase, SecAggClient
from ztfm.secagg.codec import decode_message, encode_message
from ztfm.secagg.costs import WireBytes, bytes_per_device
from ztfm.secagg.driver import Dropouts, SecAggRun, run_secagg, simulate_round
from ztfm.secagg.encoding import FixedPoint
from ztfm.secagg.graph import default_degree, default_threshold, degree_for_dropout
from ztfm.secagg.messages import (
    AdvertiseKeys,
    KeyDirectory,
    MaskedInput,
    SecAggResult,
    ShareInbox,
    ShareKeys,
    SurvivorsConfirmation,
    SurvivorsRequest,
    UnmaskRequest,
    UnmaskResponse,
)
from ztfm.secagg.params import SecAggParams
from ztfm.secagg.pipeline import UpdateCodec
from ztfm.secagg.server import SecAggServer, ServerPhase

__all__ = [
    "AdvertiseKeys",
    "ClientPhase",
    "Dropouts",
    "FixedPoint",
    "KeyDirectory",
    "MaskedInput",
    "SecAggClient",
    "SecAggParams",
    "SecAggResult",
    "SecAggRun",
    "SecAggServer",
    "ServerPhase",
    "ShareInbox",
    "ShareKeys",
    "SurvivorsConfirmation",
    "SurvivorsRequest",
    "UnmaskRequest",
    "UnmaskResponse",
    "UpdateCodec",
    "WireBytes",
    "bytes_per_device",
    "decode_message",
    "default_degree",
    "default_threshold",
    "degree_for_dropout",
    "encode_message",
    "run_secagg",
    "simulate_round",
]
