"""The browser page over run directories and models, and it as a Hub Space."""
