"""The small SKAB fleet configuration that the networked-equality tests share: a tiny
autoencoder, one local epoch, no local-only or centralised baselines (the root conftest puts
this folder on ``sys.path``). Tests append their own sections."""

SMALL_FLEET_TOML = """
[detector]
hidden = [16, 4]
[rounds]
local_epochs = 1
[compare]
local_only = false
centralised = false
"""
