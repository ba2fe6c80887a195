"""xlatda.dynamics."""
