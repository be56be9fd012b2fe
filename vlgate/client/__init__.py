"""Clients of a running vlgate (the gateway is only reached over HTTP): `vlgate ask`."""
