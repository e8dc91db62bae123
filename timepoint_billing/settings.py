"""The one settings module. Every value comes from the environment, with a safe local default.
(Long because the house style keeps every setting in this one module, each with its why.)

`ENVIRONMENT=production` refuses to start while a required secret is unset or still a dev default,
so a misconfigured deploy fails loudly at boot instead of running with a known key.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from corsheaders.defaults import default_headers
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VERSION = "0.1.0"


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from exc


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from exc


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


# --- Core
ENVIRONMENT = env_str("ENVIRONMENT", "development").lower()
IS_PRODUCTION = ENVIRONMENT == "production"
DEV_SECRET_KEY = "dev-insecure-secret-key-do-not-use-in-production"
SECRET_KEY = env_str("SECRET_KEY", DEV_SECRET_KEY)
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
# Railway's health check sends `Host: healthcheck.railway.app`; without it in ALLOWED_HOSTS the
# check gets a 400 and the deploy never goes live. Empty turns the addition off.
RAILWAY_HEALTHCHECK_HOST = env_str("RAILWAY_HEALTHCHECK_HOST", "healthcheck.railway.app")
if IS_PRODUCTION and RAILWAY_HEALTHCHECK_HOST and RAILWAY_HEALTHCHECK_HOST not in ALLOWED_HOSTS:
    ALLOWED_HOSTS.append(RAILWAY_HEALTHCHECK_HOST)
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# Set by asgi.py/wsgi.py before the settings load: a process that serves HTTP, not `manage.py`.
WEB_PROCESS = env_bool("GATEWAY_WEB_PROCESS", False)

INSTALLED_APPS = [
    # django.contrib.admin; a web process imports the apps' admin modules on first use.
    "timepoint_billing.admin_apps.GatewayAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "mozilla_django_oidc",
    "axes",
    "djstripe",
    "accounts",
    "apikeys",
    "payments",
    "relay",
    "metering",
    "internal",
    "webhooks",
    "alerts",
    "portal",  # server-rendered pages over the apps above; owns no models
    # The project itself: its `run_grants` worker runs every app's background work.
    "timepoint_billing",
]

# Django's own middleware, as subclasses that cost no thread hop per request on the JSON API
# (timepoint_billing/middleware.py explains; same order and behaviour as the stock classes).
MIDDLEWARE = [
    "timepoint_billing.middleware.RequestContextMiddleware",
    # Internal routes answer only service credentials, public routes refuse them (issue 20).
    "internal.middleware.CallerSeparationMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "timepoint_billing.middleware.SecurityMiddleware",
    "timepoint_billing.middleware.StaticFilesMiddleware",  # WhiteNoise (issue 15)
    "timepoint_billing.middleware.SessionMiddleware",
    "timepoint_billing.middleware.CommonMiddleware",
    "timepoint_billing.middleware.CsrfViewMiddleware",
    "timepoint_billing.middleware.AuthenticationMiddleware",
    "timepoint_billing.middleware.MessageMiddleware",
    "timepoint_billing.middleware.XFrameOptionsMiddleware",
    "timepoint_billing.errors.ApiErrorMiddleware",
    # Turns an admin login lockout into its answer (django-axes wants it last; async-capable).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "timepoint_billing.urls"
ASGI_APPLICATION = "timepoint_billing.asgi.application"
WSGI_APPLICATION = "timepoint_billing.wsgi.application"
AUTH_USER_MODEL = "accounts.User"
APPEND_SLASH = False  # a redirect on an API path would hide the real route; 404 JSON instead

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.context_processors.balance_notices",
            ],
        },
    },
]

# --- Database and cache
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        # Persistent connections, health-checked before reuse (a restarted PostgreSQL recovers).
        conn_max_age=env_int("DB_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL, a busy timeout and IMMEDIATE transactions let the request path, the usage flusher and
    # the grant worker write to one file without "database is locked" failures.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # Tests on a file, not shared-cache memory (which ignores the busy timeout under threads);
    # one file per test process so parallel runs never share it.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / f".test-db-{os.getpid()}.sqlite3")}
else:
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
    # Bounded work for web requests: PostgreSQL cancels a statement that runs longer than
    # DB_STATEMENT_TIMEOUT_MS or waits longer than DB_LOCK_TIMEOUT_MS for a lock (0 = no limit),
    # and the request gets 503 `database_timeout` instead of holding a worker. Only in the web
    # processes (asgi.py/wsgi.py set GATEWAY_WEB_PROCESS before settings load): `migrate` and
    # the worker's batch work are not cut short.
    if WEB_PROCESS:
        DATABASES["default"]["OPTIONS"]["options"] = (
            f"-c statement_timeout={env_int('DB_STATEMENT_TIMEOUT_MS', 30_000)} "
            f"-c lock_timeout={env_int('DB_LOCK_TIMEOUT_MS', 5_000)}"
        )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "")
# A dead Redis is noticed within the connect timeout; a reply gets a little longer, because on a
# saturated worker the reply waits for the event loop and a too-short read timeout would make the
# limiter fail open exactly at peak load (see the limiter's failure policy).
REDIS_CONNECT_TIMEOUT = env_float("REDIS_CONNECT_TIMEOUT", 0.05)
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 0.25)
REDIS_MAX_CONNECTIONS = env_int("REDIS_MAX_CONNECTIONS", 128)  # per event loop (limiter)
# The limiter tells a Redis outage from the gateway's own saturation (apikeys/limits.py): a reply
# later than REDIS_SOCKET_TIMEOUT makes a thread PING Redis with REDIS_HEALTH_TIMEOUT; only a
# failed PING applies the failure policy. A request whose limiter reply takes longer than
# LIMITER_WAIT_SECONDS while Redis answers is shed with 503 `limiter_busy` (never admitted).
REDIS_HEALTH_TIMEOUT = env_float("REDIS_HEALTH_TIMEOUT", 0.5)
LIMITER_WAIT_SECONDS = env_float("LIMITER_WAIT_SECONDS", 30.0)
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "tpb",
            "OPTIONS": {
                "SOCKET_CONNECT_TIMEOUT": REDIS_CONNECT_TIMEOUT,
                "SOCKET_TIMEOUT": REDIS_SOCKET_TIMEOUT,
                # A cache outage degrades to misses rather than 500s.
                "IGNORE_EXCEPTIONS": True,
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
DJANGO_REDIS_IGNORE_EXCEPTIONS = True
DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True

# --- Request limits
MAX_REQUEST_BODY_BYTES = env_int("MAX_REQUEST_BODY_BYTES", 1_048_576)
# The production server closes a connection whose request headers take longer (server.py).
HTTP_HEADER_TIMEOUT_SECONDS = env_float("HTTP_HEADER_TIMEOUT_SECONDS", 10.0)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BODY_BYTES
DATA_UPLOAD_MAX_NUMBER_FIELDS = 1000

# --- Auth0 (identity)
AUTH0_DOMAIN = env_str("AUTH0_DOMAIN", "")
AUTH0_AUDIENCE = env_str("AUTH0_AUDIENCE", "https://api.timepointai.com")
AUTH0_CLIENT_ID = env_str("AUTH0_CLIENT_ID", "")
AUTH0_CLIENT_SECRET = env_str("AUTH0_CLIENT_SECRET", "")
AUTH0_ISSUER = env_str("AUTH0_ISSUER", f"https://{AUTH0_DOMAIN}/" if AUTH0_DOMAIN else "")
AUTH0_JWKS_URL = env_str(
    "AUTH0_JWKS_URL", f"https://{AUTH0_DOMAIN}/.well-known/jwks.json" if AUTH0_DOMAIN else ""
)
AUTH0_USERINFO_URL = env_str(
    "AUTH0_USERINFO_URL", f"https://{AUTH0_DOMAIN}/userinfo" if AUTH0_DOMAIN else ""
)
AUTH0_JWKS_TIMEOUT = env_float("AUTH0_JWKS_TIMEOUT", 3.0)
AUTH0_JWKS_CACHE_SECONDS = env_int("AUTH0_JWKS_CACHE_SECONDS", 600)
AUTH0_JWKS_REFETCH_COOLDOWN = env_int("AUTH0_JWKS_REFETCH_COOLDOWN", 30)
AUTH0_LEEWAY_SECONDS = env_int("AUTH0_LEEWAY_SECONDS", 30)
SESSION_TOKEN_TTL_SECONDS = env_int("SESSION_TOKEN_TTL_SECONDS", 7 * 24 * 3600)

# Browser login for staff and the developer portal (mozilla-django-oidc against Auth0).
AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out username+address before any password is checked.
    "axes.backends.AxesStandaloneBackend",
    "accounts.oidc.Auth0OIDCBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# The admin's password login is throttled by django-axes: ADMIN_LOGIN_FAILURE_LIMIT failures for
# one username *from one address* lock that pair for ADMIN_LOGIN_COOLOFF_MINUTES. Keyed on the
# pair, so someone else's failures (another address) never lock a staff member out, and one
# address guessing many usernames is stopped per username. Only the admin site (the portal signs
# in through Auth0). The address is the real client's behind a trusted proxy (FORWARDED_ALLOW_IPS).
AXES_FAILURE_LIMIT = env_int("ADMIN_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("ADMIN_LOGIN_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_ONLY_ADMIN_SITE = True
AXES_HTTP_RESPONSE_CODE = 429
OIDC_RP_CLIENT_ID = AUTH0_CLIENT_ID
# The portal's "Local sign-in (development)": email + name, no password, no Auth0; it creates a
# real user resolved in (local) Flash. On by default outside production; production refuses to
# start with it on (_check_production), so anyone could otherwise sign in as anyone.
LOCAL_SIGNIN = env_bool("LOCAL_SIGNIN", not IS_PRODUCTION)
OIDC_RP_CLIENT_SECRET = AUTH0_CLIENT_SECRET
OIDC_RP_SIGN_ALGO = "RS256"
OIDC_RP_SCOPES = "openid email profile"
OIDC_OP_AUTHORIZATION_ENDPOINT = env_str(
    "OIDC_OP_AUTHORIZATION_ENDPOINT", f"https://{AUTH0_DOMAIN}/authorize" if AUTH0_DOMAIN else ""
)
OIDC_OP_TOKEN_ENDPOINT = env_str(
    "OIDC_OP_TOKEN_ENDPOINT", f"https://{AUTH0_DOMAIN}/oauth/token" if AUTH0_DOMAIN else ""
)
OIDC_OP_USER_ENDPOINT = env_str("OIDC_OP_USER_ENDPOINT", AUTH0_USERINFO_URL)
OIDC_OP_JWKS_ENDPOINT = AUTH0_JWKS_URL
OIDC_TIMEOUT = env_float("OIDC_TIMEOUT", 5.0)
OIDC_CREATE_USER = True
LOGIN_URL = "/portal/login/"
LOGIN_REDIRECT_URL = "/portal/"
LOGOUT_REDIRECT_URL = "/portal/"

# --- Flash and Clockchain (upstreams)
FLASH_URL = env_str("FLASH_URL", "http://127.0.0.1:8101").rstrip("/")
# Development defaults of the upstream secrets; production refuses to start on any of them.
DEV_UPSTREAM_SECRETS = {
    "FLASH_SERVICE_KEY": "flash-service-key",
    "FLASH_ADMIN_KEY": "flash-admin-key",
    "FLASH_GATEWAY_SIGNING_SECRET": "flash-signing-secret",
    "CLOCKCHAIN_SERVICE_KEY": "clockchain-service-key",
}
FLASH_SERVICE_KEY = env_str("FLASH_SERVICE_KEY", DEV_UPSTREAM_SECRETS["FLASH_SERVICE_KEY"])
FLASH_ADMIN_KEY = env_str("FLASH_ADMIN_KEY", DEV_UPSTREAM_SECRETS["FLASH_ADMIN_KEY"])
FLASH_GATEWAY_SIGNING_SECRET = env_str(
    "FLASH_GATEWAY_SIGNING_SECRET", DEV_UPSTREAM_SECRETS["FLASH_GATEWAY_SIGNING_SECRET"]
)
CLOCKCHAIN_URL = env_str("CLOCKCHAIN_URL", "http://127.0.0.1:8102").rstrip("/")
CLOCKCHAIN_SERVICE_KEY = env_str(
    "CLOCKCHAIN_SERVICE_KEY", DEV_UPSTREAM_SECRETS["CLOCKCHAIN_SERVICE_KEY"]
)
UPSTREAM_CONNECT_TIMEOUT = env_float("UPSTREAM_CONNECT_TIMEOUT", 2.0)
UPSTREAM_READ_TIMEOUT = env_float("UPSTREAM_READ_TIMEOUT", 15.0)
UPSTREAM_GENERATE_TIMEOUT = env_float("UPSTREAM_GENERATE_TIMEOUT", 320.0)
UPSTREAM_POOL_SIZE = env_int("UPSTREAM_POOL_SIZE", 100)
UPSTREAM_POOL_TIMEOUT = env_float("UPSTREAM_POOL_TIMEOUT", 1.0)
# Idle connections kept per upstream and process (httpcore scans them all on every request).
UPSTREAM_KEEPALIVE_CONNECTIONS = env_int("UPSTREAM_KEEPALIVE_CONNECTIONS", 10)
HEALTH_CHECK_TIMEOUT = env_float("HEALTH_CHECK_TIMEOUT", 2.0)
SSE_HEARTBEAT_SECONDS = env_float("SSE_HEARTBEAT_SECONDS", 15.0)
SSE_MAX_DURATION_SECONDS = env_float("SSE_MAX_DURATION_SECONDS", 400.0)
# Public Clockchain reads are the same for every caller, and Clockchain limits all gateway traffic
# as one client (60/min), so they are cached briefly. 0 turns the cache off (the benchmark does).
CLOCKCHAIN_CACHE_SECONDS = env_float("CLOCKCHAIN_CACHE_SECONDS", 10.0)
FLASH_COSTS_CACHE_SECONDS = env_float("FLASH_COSTS_CACHE_SECONDS", 60.0)
# Flash writes a stream's charge back after the stream closes; the reservation outlives it by this.
RELAY_STREAM_SETTLE_SECONDS = env_float("RELAY_STREAM_SETTLE_SECONDS", 2.0)
# An async generation still `processing` in Flash after this long is settled as failed (refunded):
# Flash's background task dies with its process and never refunds then.
ASYNC_GENERATION_STALE_SECONDS = env_int("ASYNC_GENERATION_STALE_SECONDS", 1800)

# --- Stripe and Apple (payments)
STRIPE_SECRET_KEY = env_str("STRIPE_SECRET_KEY", "")
STRIPE_PUBLISHABLE_KEY = env_str("STRIPE_PUBLISHABLE_KEY", "")
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET", "")
# During a rotation both the old and the new signing secret are accepted.
STRIPE_WEBHOOK_SECRETS = [
    s for s in [STRIPE_WEBHOOK_SECRET, *env_list("STRIPE_WEBHOOK_SECRETS_EXTRA", [])] if s
]
STRIPE_API_BASE = env_str("STRIPE_API_BASE", "")  # a Stripe-compatible server in tests
# The Stripe API version the payments code is written against (dj-stripe 2.11.0's own pin), sent
# with every API call (the SDK's and dj-stripe's). Not from the environment on purpose: a new
# version changes object shapes, so moving it is a code change with its tests. Webhook payloads
# follow the version of the webhook *endpoint* instead; README says to create it with this one.
STRIPE_API_VERSION = "2026-05-27.dahlia"
# Plans and packs come from Stripe's products and prices (payments.catalogue); webhooks keep the
# catalogue fresh, and the worker re-reads it this often in case one was missed (0: never).
CATALOGUE_SYNC_SECONDS = env_int("CATALOGUE_SYNC_SECONDS", 3600)
CHECKOUT_SUCCESS_URL = env_str(
    "CHECKOUT_SUCCESS_URL",
    "https://app.timepointai.com/billing/success?session_id={CHECKOUT_SESSION_ID}",
)
CHECKOUT_CANCEL_URL = env_str("CHECKOUT_CANCEL_URL", "https://app.timepointai.com/billing/cancel")
BILLING_PORTAL_RETURN_URL = env_str(
    "BILLING_PORTAL_RETURN_URL", "https://app.timepointai.com/billing"
)
APPLE_BUNDLE_ID = env_str("APPLE_BUNDLE_ID", "com.timepointai.app")
APPLE_APP_APPLE_ID = env_int("APPLE_APP_APPLE_ID", 0)
APPLE_ENVIRONMENT = env_str("APPLE_ENVIRONMENT", "Sandbox")
APPLE_ROOT_CERT_PATHS = env_list("APPLE_ROOT_CERT_PATHS", [])
APPLE_PRODUCT_CREDITS = {
    pair.split("=", 1)[0].strip(): int(pair.split("=", 1)[1])
    for pair in env_list("APPLE_PRODUCT_CREDITS", [])
    if "=" in pair
}
# Online OCSP checks of Apple's certificate chain; off only in tests (no network).
APPLE_ENABLE_ONLINE_CHECKS = env_bool("APPLE_ENABLE_ONLINE_CHECKS", True)

# Credit-grant outbox (payments): retries, reconciliation and the per-user busy wait.
GRANT_RETRY_BASE_SECONDS = env_float("GRANT_RETRY_BASE_SECONDS", 5.0)
GRANT_RETRY_MAX_SECONDS = env_float("GRANT_RETRY_MAX_SECONDS", 600.0)
GRANT_MAX_ATTEMPTS = env_int("GRANT_MAX_ATTEMPTS", 200)
GRANT_SENDING_LEASE_SECONDS = env_int("GRANT_SENDING_LEASE_SECONDS", 300)
GRANT_RECONCILE_DELAY_SECONDS = env_float("GRANT_RECONCILE_DELAY_SECONDS", 30.0)
GRANT_RECONCILE_MAX_PAGES = env_int("GRANT_RECONCILE_MAX_PAGES", 20)
GRANT_BUSY_WAIT_SECONDS = env_float("GRANT_BUSY_WAIT_SECONDS", 5.0)
GRANT_BUSY_RETRY_SECONDS = env_float("GRANT_BUSY_RETRY_SECONDS", 15.0)
GRANT_WORKER_SLEEP_SECONDS = env_float("GRANT_WORKER_SLEEP_SECONDS", 2.0)
# Auto-recharge: a recharge Stripe gave no usable answer for is asked again (same idempotency
# key) until this long after it was recorded, then left to staff; Stripe keeps a key 24 hours.
RECHARGE_RETRY_WINDOW_SECONDS = env_int("RECHARGE_RETRY_WINDOW_SECONDS", 6 * 3600)
# Staff reconcile against Flash's ledger: the most one call spends paging it, and how long its
# resume cursor stays valid.
RECONCILE_BUDGET_SECONDS = env_float("RECONCILE_BUDGET_SECONDS", 20.0)
RECONCILE_CURSOR_SECONDS = env_int("RECONCILE_CURSOR_SECONDS", 3600)
# How often a sleeping worker looks for a web process's nudge (a cache read; needs REDIS_URL).
GRANT_WORKER_NUDGE_POLL_SECONDS = env_float("GRANT_WORKER_NUDGE_POLL_SECONDS", 0.2)

# Generations whose answer was lost (relay.refunds): when the worker first asks Flash, how often
# it asks again, and how long after forwarding a generation with no result counts as failed
# (Flash's own limit is 300 s sync, 360 s stream).
GENERATION_RECONCILE_DELAY_SECONDS = env_float("GENERATION_RECONCILE_DELAY_SECONDS", 5.0)
GENERATION_RECONCILE_RETRY_SECONDS = env_float("GENERATION_RECONCILE_RETRY_SECONDS", 15.0)
GENERATION_OUTCOME_DEADLINE_SECONDS = env_float("GENERATION_OUTCOME_DEADLINE_SECONDS", 420.0)

# --- Webhooks to developers (webhooks/)
# Endpoint URLs on private, loopback or link-local addresses (checked on the addresses the host
# resolves to, at every send) and plain http are allowed only outside production, where local
# receivers are how the feature is tried and tested; production refuses to start with either on.
WEBHOOKS_ALLOW_PRIVATE_URLS = env_bool("WEBHOOKS_ALLOW_PRIVATE_URLS", not IS_PRODUCTION)
WEBHOOKS_REQUIRE_HTTPS = env_bool("WEBHOOKS_REQUIRE_HTTPS", IS_PRODUCTION)
# Encrypts the endpoints' signing secrets at rest (changing it makes them unreadable: rotate).
WEBHOOK_SECRET_KEY = env_str("WEBHOOK_SECRET_KEY", SECRET_KEY)
# One attempt's whole deadline (connect, send, answer), and the connect part of it.
WEBHOOK_TIMEOUT_SECONDS = env_float("WEBHOOK_TIMEOUT_SECONDS", 10.0)
WEBHOOK_CONNECT_TIMEOUT_SECONDS = env_float("WEBHOOK_CONNECT_TIMEOUT_SECONDS", 5.0)
# Retries: base, doubling, capped, until the window after the event ends (Stripe's 3 days).
WEBHOOK_RETRY_BASE_SECONDS = env_float("WEBHOOK_RETRY_BASE_SECONDS", 60.0)
WEBHOOK_RETRY_MAX_SECONDS = env_float("WEBHOOK_RETRY_MAX_SECONDS", 12 * 3600.0)
WEBHOOK_RETRY_WINDOW_SECONDS = env_int("WEBHOOK_RETRY_WINDOW_SECONDS", 3 * 24 * 3600)
# The worker's delivery loop: attempts at once, and its pause when nothing is due.
WEBHOOK_WORKER_THREADS = env_int("WEBHOOK_WORKER_THREADS", 4)
WEBHOOK_WORKER_SLEEP_SECONDS = env_float("WEBHOOK_WORKER_SLEEP_SECONDS", 2.0)
MAX_WEBHOOK_ENDPOINTS = env_int("MAX_WEBHOOK_ENDPOINTS_PER_USER", 16)
# How often the worker looks for keys entering their last 7 days (key.expiring).
KEY_EXPIRY_SCAN_SECONDS = env_float("KEY_EXPIRY_SCAN_SECONDS", 60.0)

# --- Email (low-balance alerts; alerts/)
# SMTP when EMAIL_HOST is set (production requires it); otherwise messages are printed to the
# console, which is how development sees them.
EMAIL_HOST = env_str("EMAIL_HOST", "")
EMAIL_PORT = env_int("EMAIL_PORT", 587)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", EMAIL_PORT == 587)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", EMAIL_PORT == 465)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10)
EMAIL_BACKEND = (
    "django.core.mail.backends.smtp.EmailBackend"
    if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend"
)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "TIMEPOINT <no-reply@timepointai.com>")
# Where emails send people (the portal's pages).
PORTAL_URL = env_str(
    "PORTAL_URL",
    "https://api.timepointai.com/portal/" if IS_PRODUCTION else "http://127.0.0.1:8000/portal/",
)
# An alert email that fails is retried (doubling from this) up to this many attempts.
ALERT_EMAIL_RETRY_SECONDS = env_float("ALERT_EMAIL_RETRY_SECONDS", 30.0)
ALERT_EMAIL_MAX_ATTEMPTS = env_int("ALERT_EMAIL_MAX_ATTEMPTS", 10)

# dj-stripe: the Stripe mirror. Keys come from the environment, never from the admin.
STRIPE_LIVE_MODE = STRIPE_SECRET_KEY.startswith("sk_live_")
STRIPE_TEST_SECRET_KEY = STRIPE_SECRET_KEY if not STRIPE_LIVE_MODE else ""
STRIPE_LIVE_SECRET_KEY = STRIPE_SECRET_KEY if STRIPE_LIVE_MODE else ""
DJSTRIPE_FOREIGN_KEY_TO_FIELD = "id"
DJSTRIPE_USE_NATIVE_JSONFIELD = True
DJSTRIPE_WEBHOOK_SECRET = STRIPE_WEBHOOK_SECRET

# --- Limits and tiers
# Callers without an API key (SPA sessions, raw Auth0 JWTs) get a per-user limit.
USER_RATE_LIMIT_PER_MINUTE = env_int("USER_RATE_LIMIT_PER_MINUTE", 60)
USER_RATE_LIMIT_PER_DAY = env_int("USER_RATE_LIMIT_PER_DAY", 5000)
USER_CONCURRENCY_LIMIT = env_int("USER_CONCURRENCY_LIMIT", 5)
API_KEY_DIGEST_SECRET = env_str("API_KEY_DIGEST_SECRET", SECRET_KEY)
MAX_LIVE_KEYS_PER_USER = env_int("MAX_LIVE_KEYS_PER_USER", 20)
AUTH_FAILURE_LIMIT_PER_MINUTE = env_int("AUTH_FAILURE_LIMIT_PER_MINUTE", 30)
# Which proxies' X-Forwarded-For gunicorn/uvicorn believe (the start command passes it as
# --forwarded-allow-ips). Read here only for the production check: behind Railway's proxy a
# loopback-only value gives every client the proxy's address (README, "Behind a proxy").
FORWARDED_ALLOW_IPS = env_str("FORWARDED_ALLOW_IPS", "")
ON_RAILWAY = any(
    os.environ.get(name)
    for name in ("RAILWAY_ENVIRONMENT_NAME", "RAILWAY_ENVIRONMENT", "RAILWAY_PROJECT_ID")
)
METERING_FLUSH_INTERVAL_SECONDS = env_float("METERING_FLUSH_INTERVAL_SECONDS", 1.0)
METERING_BUFFER_MAX = env_int("METERING_BUFFER_MAX", 10_000)
METERING_ROLLUP_INTERVAL_SECONDS = env_float("METERING_ROLLUP_INTERVAL_SECONDS", 60.0)
# Off only where something else flushes (tests call metering.services.flush_usage()).
METERING_BACKGROUND_FLUSH = env_bool("METERING_BACKGROUND_FLUSH", True)

# --- Internal API for sibling services (internal/; issue 20)
# `/internal/…` answers only callers with a service credential (`X-Service-Key`). Off → every
# internal route is 404, as if it did not exist. A port → internal routes answer only on that
# listener (bind it privately: gunicorn `--bind [::]:$INTERNAL_API_PORT`), and that listener
# serves nothing but them and /health. Networks → only from those client addresses.
INTERNAL_API_ENABLED = env_bool("INTERNAL_API_ENABLED", True)
INTERNAL_API_PORT = env_int("INTERNAL_API_PORT", 0)
INTERNAL_API_ALLOWED_NETWORKS = env_list("INTERNAL_API_ALLOWED_NETWORKS", [])
# `name:secret,name:secret` (e.g. `mcp:…,clockchain:…`); two secrets under one name during a
# rotation. Only their digests are kept past start-up; staff may add more in the admin.
INTERNAL_SERVICE_KEYS = [
    (pair.split(":", 1)[0].strip(), pair.split(":", 1)[1].strip())
    for pair in env_list("INTERNAL_SERVICE_KEYS", [])
    if ":" in pair
]
INTERNAL_SERVICE_RATE_LIMIT_PER_MINUTE = env_int("INTERNAL_SERVICE_RATE_LIMIT_PER_MINUTE", 3000)
INTERNAL_SERVICE_RATE_LIMIT_PER_DAY = env_int("INTERNAL_SERVICE_RATE_LIMIT_PER_DAY", 1_000_000)
INTERNAL_SERVICE_CONCURRENCY_LIMIT = env_int("INTERNAL_SERVICE_CONCURRENCY_LIMIT", 50)

# --- DRF and OpenAPI
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.GatewayAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"]
    + (["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "timepoint_billing.openapi.GatewayAutoSchema",
    "EXCEPTION_HANDLER": "timepoint_billing.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SYSTEM_FONTS = "system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif"
SPECTACULAR_SETTINGS = {
    "TITLE": "TIMEPOINT API",
    "DESCRIPTION": (BASE_DIR / "timepoint_billing" / "api_description.md").read_text(),
    "VERSION": VERSION,
    "SERVE_INCLUDE_SCHEMA": False,
    # The internal API has its own document (/internal/schema), never this public one.
    "PREPROCESSING_HOOKS": ["internal.openapi.public_paths_only"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",  # the default
        "timepoint_billing.openapi.add_response_headers",
        "webhooks.openapi.add_delivery_headers",
    ],
    "ENUM_NAME_OVERRIDES": {"WebhookEventTypeEnum": "webhooks.models.EventType"},
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Nothing loads from outside this server: no validator badge (validator.swagger.io), and
    # Redoc uses the system font stack (templates/drf_spectacular/redoc.html drops Google Fonts).
    "SWAGGER_UI_SETTINGS": {
        "deepLinking": True,
        "validatorUrl": None,
        "persistAuthorization": True,
    },
    "REDOC_UI_SETTINGS": {
        "theme": {
            "typography": {
                "fontFamily": SYSTEM_FONTS,
                "headings": {"fontFamily": SYSTEM_FONTS},
                "code": {"fontFamily": "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace"},
            }
        }
    },
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
}

# --- CORS (seed §11)
CORS_ALLOWED_ORIGINS = env_list(
    "CORS_ALLOWED_ORIGINS", ["https://app.timepointai.com", "https://timepointai.com"]
)
# A local SPA on any localhost port, outside production only: in production a localhost origin
# would be any page a user's own machine serves, credentials included.
CORS_ALLOWED_ORIGIN_REGEXES = env_list(
    "CORS_ALLOWED_ORIGIN_REGEXES", [] if IS_PRODUCTION else [r"^http://localhost:\d+$"]
)
CORS_ALLOW_METHODS = ["GET", "POST", "PATCH", "DELETE", "OPTIONS"]
# Listed, never "*": on a credentialed request browsers take "*" literally, so the SPA's
# `Authorization` preflight would fail. No client route reads an Idempotency-Key, so none is listed.
CORS_ALLOW_HEADERS = [*default_headers, "x-api-key", "x-request-id"]
CORS_ALLOW_CREDENTIALS = True
CORS_EXPOSE_HEADERS = [
    "X-Request-ID",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "RateLimit",
    "RateLimit-Policy",
    "Retry-After",
]

# --- Static files, i18n, security
STATIC_URL = "/static/"

# Prometheus metrics (issue 15, timepoint_billing/metrics.py): `/metrics` answers only
# `Authorization: Bearer <METRICS_TOKEN>`; unset, the endpoint answers 404 in every environment.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# Production runs behind Railway's TLS-terminating proxy (as cookiecutter-django sets it up):
# the proxy's X-Forwarded-Proto says whether the client used https; plain http is redirected,
# except the health checks, which the platform sends over http from inside; browsers are told
# to use https only (HSTS).
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if IS_PRODUCTION else None
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", IS_PRODUCTION)
# The internal API is called over the private network, where no proxy terminates TLS
# (README, For other TIMEPOINT services): a redirect would only break its callers.
SECURE_REDIRECT_EXEMPT = [r"^health$", r"^health/", r"^internal/"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if IS_PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", IS_PRODUCTION)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SESSION_COOKIE_SECURE = IS_PRODUCTION
CSRF_COOKIE_SECURE = IS_PRODUCTION
# Django's deploy check looks for its own security, clickjacking and CSRF middleware by dotted
# path; the project installs subclasses of exactly those (timepoint_billing/middleware.py, which
# only change how they run on the event loop), so these three warnings are false.
SILENCED_SYSTEM_CHECKS = ["security.W001", "security.W002", "security.W003"]
# `/health?deep=1` and `/health/ready` call both upstreams: in production only staff (a staff
# user's bearer credentials) or a monitor presenting this token in `X-Health-Token` may.
HEALTH_CHECK_TOKEN = env_str("HEALTH_CHECK_TOKEN", "")
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

# --- Static files served by the gateway itself (WhiteNoise, issue 15)
# `collectstatic` writes every file under a content hash (plus .gz and .br copies); the gateway
# serves them from STATIC_ROOT with a year-long `immutable` cache, in every mode (make run, the
# image, Railway), through timepoint_billing.middleware.StaticFilesMiddleware. A page that names a
# file the collection lacks fails loudly (the manifest is strict), never with a silent 404.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
WHITENOISE_MAX_AGE = env_int("STATIC_MAX_AGE_SECONDS", 3600)  # unhashed names only
WHITENOISE_AUTOREFRESH = False  # collected files only, read once per worker at start
# Served at the site's root: browsers ask every host for /favicon.ico.
WHITENOISE_ROOT = BASE_DIR / "timepoint_billing" / "public"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "timepoint_billing.logs.JsonFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.request": {"level": "ERROR"},  # our request log line replaces Django's
        "django.server": {"level": "ERROR"},
        # httpx logs every upstream call at INFO: a second line per request, at a real cost.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}


def _check_production() -> None:
    """Refuse to boot a production process that would run on a dev default or an unset secret.

    Every offending variable is named in one message, so one failed deploy shows them all."""
    problems = []
    if SECRET_KEY == DEV_SECRET_KEY or len(SECRET_KEY) < 32:
        problems.append("SECRET_KEY is unset, a dev default, or shorter than 32 characters")
    # Defaults to SECRET_KEY (checked above); set explicitly it must not be the dev key either.
    if API_KEY_DIGEST_SECRET == DEV_SECRET_KEY:
        problems.append("API_KEY_DIGEST_SECRET is the development default")
    if DEBUG:
        problems.append("DEBUG must be off")
    # Read from the environment, not the settings above: a value that only exists as a default
    # (the local upstream URLs) is as wrong in production as a missing one.
    required = {
        "DATABASE_URL": os.environ.get("DATABASE_URL", ""),
        "REDIS_URL": REDIS_URL,
        "AUTH0_DOMAIN": AUTH0_DOMAIN,
        "AUTH0_AUDIENCE": os.environ.get("AUTH0_AUDIENCE", ""),
        "STRIPE_SECRET_KEY": STRIPE_SECRET_KEY,
        "STRIPE_WEBHOOK_SECRET": STRIPE_WEBHOOK_SECRET,
        "FLASH_URL": os.environ.get("FLASH_URL", ""),
        "FLASH_SERVICE_KEY": os.environ.get("FLASH_SERVICE_KEY", ""),
        "FLASH_ADMIN_KEY": os.environ.get("FLASH_ADMIN_KEY", ""),
        "FLASH_GATEWAY_SIGNING_SECRET": os.environ.get("FLASH_GATEWAY_SIGNING_SECRET", ""),
        "CLOCKCHAIN_URL": os.environ.get("CLOCKCHAIN_URL", ""),
        "CLOCKCHAIN_SERVICE_KEY": os.environ.get("CLOCKCHAIN_SERVICE_KEY", ""),
        "EMAIL_HOST": EMAIL_HOST,
    }
    unset = {name for name, value in required.items() if not value.strip()}
    problems += [f"{name} is not set" for name in required if name in unset]
    upstream_secrets = {
        "FLASH_SERVICE_KEY": FLASH_SERVICE_KEY,
        "FLASH_ADMIN_KEY": FLASH_ADMIN_KEY,
        "FLASH_GATEWAY_SIGNING_SECRET": FLASH_GATEWAY_SIGNING_SECRET,
        "CLOCKCHAIN_SERVICE_KEY": CLOCKCHAIN_SERVICE_KEY,
    }
    problems += [
        f"{name} is the development default"
        for name, value in upstream_secrets.items()
        if name not in unset and value == DEV_UPSTREAM_SECRETS[name]
    ]
    if APPLE_ENVIRONMENT == "Production":  # the exact value payments' verifier accepts
        problems += [
            f"{name} is not set (required with APPLE_ENVIRONMENT=Production)"
            for name, value in [
                ("APPLE_APP_APPLE_ID", APPLE_APP_APPLE_ID),
                ("APPLE_ROOT_CERT_PATHS", APPLE_ROOT_CERT_PATHS),
            ]
            if not value
        ]
    if LOCAL_SIGNIN:
        problems.append("LOCAL_SIGNIN must be off in production (anyone could sign in as anyone)")
    if STRIPE_API_BASE:
        problems.append("STRIPE_API_BASE must not be set in production")
    if WEBHOOKS_ALLOW_PRIVATE_URLS:
        problems.append(
            "WEBHOOKS_ALLOW_PRIVATE_URLS must be off in production (webhooks could reach the "
            "private network)"
        )
    if not WEBHOOKS_REQUIRE_HTTPS:
        problems.append("WEBHOOKS_REQUIRE_HTTPS must be on in production")
    if WEBHOOK_SECRET_KEY == DEV_SECRET_KEY:
        problems.append("WEBHOOK_SECRET_KEY is the development default")
    if any(":" not in pair for pair in env_list("INTERNAL_SERVICE_KEYS", [])):
        problems.append("INTERNAL_SERVICE_KEYS must be name:secret pairs")
    problems += [
        f"INTERNAL_SERVICE_KEYS: the secret of {name!r} is shorter than 32 characters"
        for name, secret in INTERNAL_SERVICE_KEYS
        if len(secret) < 32
    ]
    trusted = {ip.strip() for ip in FORWARDED_ALLOW_IPS.split(",") if ip.strip()}
    if not trusted:
        problems.append(
            "FORWARDED_ALLOW_IPS is not set (the proxy whose X-Forwarded-For gives each client's "
            "address; 127.0.0.1 when nothing is in front)"
        )
    elif ON_RAILWAY and trusted <= {"127.0.0.1", "::1", "localhost"}:
        problems.append(
            "FORWARDED_ALLOW_IPS trusts only loopback on Railway: every client would have the "
            "address of Railway's proxy (and share one failed-authentication throttle); set it "
            "to the range Railway's proxy connects from (README, Deployment)"
        )
    if problems:
        raise ImproperlyConfigured(
            "Refusing to start with ENVIRONMENT=production: " + "; ".join(problems)
        )


if IS_PRODUCTION:
    _check_production()
