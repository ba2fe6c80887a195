"""xlatda.sphere."""
