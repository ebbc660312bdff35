"""One tagged APIRouter per module; :mod:`model.server.app` includes them all."""
