"""xlatda.assimilate."""
