"""Secure multi-host deployment: federation certificates and keys (`certs`), starting a TLS SuperLink and
authenticated SuperNodes (`federation`), and the `fedsim deploy` commands (`cli`)."""

from fedsim.deploy.certs import FederationError

__all__ = ["FederationError"]
