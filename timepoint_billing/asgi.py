"""What production runs: gunicorn with uvicorn-worker's UvicornWorker (see Dockerfile)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "timepoint_billing.settings")

application = get_asgi_application()
