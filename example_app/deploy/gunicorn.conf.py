"""gunicorn settings for the example app on Cloud Foundry or Kubernetes.

Use: ``gunicorn --config example_app/deploy/gunicorn.conf.py "example_app:create_app()"``.
Several workers share exchanged tokens only through a shared cache: set
``IAS_PKCE_CACHE_TYPE=RedisCache`` (with a bound Redis) and ``IAS_PKCE_CACHE_SECRET``.
"""

import os

# The platform says where to listen; every interface, since its router connects from outside.
bind = f"0.0.0.0:{os.environ.get('PORT', '8080')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Views wait on IAS and on downstream services: threads keep a worker busy while it waits.
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = "gthread"
# Build the app (and read the bindings) once, before forking: a broken binding stops the
# start at once, and workers share the loaded code.
preload_app = True
timeout = 30
graceful_timeout = 20
keepalive = 5
# No access log: the platform's router logs requests, and a query string could carry a
# token (the library refuses tokens in the URL, but the log would already hold it).
accesslog = None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
# Cloud Foundry's router terminates TLS and sets X-Forwarded-*.
forwarded_allow_ips = "*"
