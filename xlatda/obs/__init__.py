"""xlatda.obs."""
