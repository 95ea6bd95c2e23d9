"""The application on top of the libraries: the ``awp`` command (one module per subcommand in
:mod:`awp_landscape.commands`), the pipeline behind ``awp demo`` / ``awp reproduce``
(:mod:`awp_landscape.pipeline`) and the report (:mod:`awp_landscape.report`)."""
