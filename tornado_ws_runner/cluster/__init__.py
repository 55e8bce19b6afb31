"""Cluster mode: several daemons, one API, joined through Redis (CONTRACT section 7)."""
