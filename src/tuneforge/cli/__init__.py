"""The `tuneforge` command line: one small module per subcommand."""
