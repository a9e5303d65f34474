"""tgw device_sim: CAN bus, in-car telematics unit and simulated fleets."""
