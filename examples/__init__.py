"""Examples that come with the repository (not part of the installed package)."""
