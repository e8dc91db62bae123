"""WSGI entry for tools that need it; production serves ASGI (the relay streams)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "timepoint_billing.settings")
# Web requests get the database time limits (settings.py); `manage.py` commands do not.
os.environ.setdefault("GATEWAY_WEB_PROCESS", "true")

application = get_wsgi_application()
