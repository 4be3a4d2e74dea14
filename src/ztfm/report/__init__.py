"""Reports (layer 7): metrics tables and the HTML report of a simulation."""
