"""xlatda.datasets."""
