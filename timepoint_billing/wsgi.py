"""WSGI entry for tools that need it; production serves ASGI (the relay streams)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "timepoint_billing.settings")

application = get_wsgi_application()
