"""Every integration test fails when the service logged an internal error."""

from tests.integration.internal_errors import no_internal_error

__all__ = ["no_internal_error"]
