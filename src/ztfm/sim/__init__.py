"""Fleet simulation (layer 7): fleets drawn from real data, scenarios, ``ztfm simulate``."""
