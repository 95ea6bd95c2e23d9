"""One module per subcommand of ``awp``; each has ``register(subparsers)``."""
