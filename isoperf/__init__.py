"""isoperf: real-time data acquisition for isolated perfusion surgery.

This package holds the plumbing shared by every service (message schemas,
codec, topics, settings, MQTT loop, InfluxDB writer, lifecycle, local stack).
The services themselves live under ``services/``.
"""

__version__ = "0.1.0"
