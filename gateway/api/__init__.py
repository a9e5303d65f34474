"""The gateway's HTTP side: health, metrics, and (later) the fleet API."""
