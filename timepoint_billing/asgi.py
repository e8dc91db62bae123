"""What production runs: gunicorn with uvicorn-worker's UvicornWorker (see Dockerfile)."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "timepoint_billing.settings")
# Web requests get the database time limits (settings.py); `manage.py` commands do not.
os.environ.setdefault("GATEWAY_WEB_PROCESS", "true")
django.setup(set_prefix=False)  # what django.core.asgi.get_asgi_application() does

from timepoint_billing.asgi_handler import GatewayASGIHandler  # noqa: E402

application = GatewayASGIHandler()
