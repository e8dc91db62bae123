# Production image: gunicorn running the ASGI app with uvicorn-worker's UvicornWorker.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=timepoint_billing.settings PORT=8000 WEB_CONCURRENCY=2 \
    FORWARDED_ALLOW_IPS=127.0.0.1
WORKDIR /app

COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY . .
RUN SECRET_KEY=build-only-collectstatic python manage.py collectstatic --noinput \
    && useradd --create-home --uid 10001 gateway && chown -R gateway /app
USER gateway

EXPOSE 8000
# The web process. The grant worker runs from the same image as a second service:
#   python manage.py run_grants
# No --access-logfile: the request middleware writes the one JSON line per request. The client
# address (the auth-failure limit's key) is taken from X-Forwarded-For only when the connection
# comes from FORWARDED_ALLOW_IPS, the proxy in front (README, Configuration).
CMD ["sh", "-c", "python manage.py migrate --noinput && exec gunicorn timepoint_billing.asgi:application -k timepoint_billing.server.GatewayUvicornWorker --bind 0.0.0.0:${PORT} --workers ${WEB_CONCURRENCY} --graceful-timeout 30 --timeout 420 --keep-alive 75 --forwarded-allow-ips \"${FORWARDED_ALLOW_IPS:-127.0.0.1}\""]
