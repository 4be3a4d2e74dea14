"""The IoT traffic lab (layer 7): a real fleet in Linux network namespaces, real attack tools.

``ztfm lab run`` builds one namespace per device behind a bridge namespace, runs a real MQTT
broker (mosquitto) and the fleet's services, launches attacks with nmap, hping3, hydra and bot
scripts on a recorded schedule, captures a pcap per device and writes labels and a manifest.
See ``docs/lab.md``.
"""
