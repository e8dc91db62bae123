# Production image: gunicorn running the ASGI app with the project's uvicorn worker
# (gunicorn.conf.py holds the server's settings; `make run` and the tests start the same server).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=timepoint_billing.settings PORT=8000 WEB_CONCURRENCY=2
WORKDIR /app

COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY . .
# Static files hashed and compressed into the image (WhiteNoise serves them, README). Built
# before ENVIRONMENT=production applies: the build has none of the runtime secrets.
RUN SECRET_KEY=build-only-collectstatic ENVIRONMENT=build python manage.py collectstatic --noinput -v 0 \
    && useradd --create-home --uid 10001 gateway && chown -R gateway /app
USER gateway

# Production by default: the settings refuse to start while a required secret is unset or a
# development default (README, Deployment). `docker run -e ENVIRONMENT=staging` opts out.
ENV ENVIRONMENT=production

EXPOSE 8000
# The web process. The grant worker runs from the same image as a second service:
#   python manage.py run_grants
# The client address (the failed-authentication throttle's key) is taken from X-Forwarded-For
# only for connections from FORWARDED_ALLOW_IPS, the proxy in front: set it where the image runs
# (Railway: its proxy's range; README, Deployment). Production refuses to start without it.
CMD ["sh", "-c", "python manage.py migrate --noinput && exec gunicorn -c gunicorn.conf.py"]
