"""The plugin system: hook specifications, the component registry and the core's own plugin."""
