"""What a federation of sites is set up with, without Flower: run settings, simulated sites, wire protocol."""
