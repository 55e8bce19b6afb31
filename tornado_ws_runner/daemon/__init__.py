"""The daemon shell: the command line, the pidfile and systemd notification."""
