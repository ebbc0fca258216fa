"""Using an export: loading and running it, and serving it over HTTP."""
