"""What a federation of sites is set up with, without Flower: the run's settings and its simulated sites."""
