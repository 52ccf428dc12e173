"""DigitalOcean API stand-in for the local cloud: DO's resources and semantics over `Cloud`."""

from lab.api.app import create_app

__all__ = ["create_app"]
