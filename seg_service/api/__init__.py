"""FastAPI segmentation server; `create_app` builds it, `seg-service` (cli.main) runs it."""

from seg_service.api.app import create_app
from seg_service.api.settings import Settings

__all__ = ["Settings", "create_app"]
