"""xlatda.encoders."""
