"""The application: run configs, run directories, checkpoints and the command line."""
